"""How every stage gets its model: tokenizer -> vocabulary check -> resolved config -> weights.

    prepared = prepare_model(cfg.model, logger)        # the checkpoint opened once; nothing loaded yet
    prepared.tokenizer, prepared.config                # checked against each other before any weight
    model = prepared.load(mesh, rules, seed)           # the weights (or random init) into their shardings

`prepare_model` takes the `model` section only; whatever can fail on a bad tokenizer or a mismatched
vocabulary fails there, before any weight is read.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from jz3_jax.checkpoint.opened import OpenedCheckpoint, open_checkpoint
from jz3_jax.model.config import ModelConfig

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from jz3_jax.model.decoder import Decoder
    from jz3_jax.runtime.sharding import Rules
    from jz3_jax.tokenizer import Tokenizer


def check_vocab_matches(tokenizer, model_cfg: ModelConfig) -> None:
    """A tokenizer must fit the model's embeddings: no id past the last row, and no more spare rows
    than padding the rows up to a round size accounts for (5%, at least 256). ConfigError otherwise."""
    from jz3_jax.errors import ConfigError

    ids, rows = tokenizer.vocab_size, model_cfg.vocab_size
    spare = rows - ids
    if spare < 0 or (model_cfg.checkpoint and spare > max(256, ids // 20)):
        model = model_cfg.checkpoint or "the random model"
        raise ConfigError(f"tokenizer {tokenizer.source} has {ids} ids but {model} has {rows} embedding rows: "
                          "they do not belong together (set model.tokenizer to the model's own tokenizer)")


def _same_path(a: str, b: str) -> bool:
    from pathlib import Path

    return bool(a and b) and Path(a).resolve() == Path(b).resolve()


def stage_tokenizer(model_cfg: ModelConfig, opened: OpenedCheckpoint | None,
                    logger: logging.Logger) -> Tokenizer | None:
    """`model.tokenizer` (must load), else the checkpoint's own (None, logged, when it has none that loads)."""
    from jz3_jax.tokenizer import TokenizerError, load_tokenizer

    own = opened.tokenizer_path if opened is not None else ""
    path = model_cfg.tokenizer or own
    if not path:
        if opened is not None:
            logger.info("no tokenizer found in %s; continuing without one", opened.path)
        return None
    try:
        return opened.load_tokenizer() if _same_path(path, own) else load_tokenizer(path)
    except TokenizerError:
        if model_cfg.tokenizer:
            raise
        logger.info("no tokenizer found in %s; continuing without one", path)
        return None


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedModel:
    """A model section resolved against its checkpoint, with its checked tokenizer; `load` reads the weights.

    config: the checkpoint's architecture with the section's source and numerics (the section itself
    for a random model); opened: the open checkpoint (None: random init)."""

    config: ModelConfig
    tokenizer: Tokenizer | None
    opened: OpenedCheckpoint | None

    def load(self, mesh: Mesh, rules: Rules, seed: int = 0) -> Decoder:
        """The checkpoint's weights in their shardings, or a random model from `seed`."""
        if self.opened is None:
            from jz3_jax.model.factory import init_model

            return init_model(self.config, mesh, rules, seed)
        return self.opened.load(self.config, mesh, rules)


def prepare_model(model_cfg: ModelConfig, logger: logging.Logger, needed_by: str = "") -> PreparedModel:
    """Open `model.checkpoint` once, load the tokenizer (`model.tokenizer` or the checkpoint's own) and
    check it against the vocabulary. `needed_by` (a stage name): a missing tokenizer is a ConfigError."""
    opened = open_checkpoint(model_cfg.checkpoint) if model_cfg.checkpoint else None
    config = opened.resolve(model_cfg) if opened is not None else model_cfg
    tokenizer = stage_tokenizer(model_cfg, opened, logger)
    if tokenizer is None and needed_by:
        from jz3_jax.errors import ConfigError

        raise ConfigError(f"{needed_by} needs a tokenizer: set model.tokenizer (or a checkpoint that has one)")
    if tokenizer is not None:
        check_vocab_matches(tokenizer, config)
    return PreparedModel(config, tokenizer, opened)


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """The architecture of `cfg.checkpoint` (read from its metadata) with `cfg`'s source and numerics.

    Without a checkpoint, `cfg` itself (a randomly initialised model)."""
    return open_checkpoint(cfg.checkpoint).resolve(cfg) if cfg.checkpoint else cfg


def load_model(cfg: ModelConfig, mesh: Mesh, rules: Rules, seed: int = 0) -> tuple[Decoder, ModelConfig]:
    """(model, resolved ModelConfig): `cfg.checkpoint` loaded into its shardings (opened once), or
    random init. No tokenizer: stages use `prepare_model`."""
    opened = open_checkpoint(cfg.checkpoint) if cfg.checkpoint else None
    prepared = PreparedModel(opened.resolve(cfg) if opened is not None else cfg, None, opened)
    return prepared.load(mesh, rules, seed), prepared.config
