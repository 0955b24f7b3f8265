"""Checkpoints: load any supported source into a sharded model, save as orbax or Hugging Face.

Sources: a HF directory (safetensors, one file or sharded with an index), an orbax checkpoint
directory written by this project, or a `.gguf` file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from jz3_jax.checkpoint.errors import CheckpointError
from jz3_jax.model.config import ModelConfig

if TYPE_CHECKING:  # kept out of the import so `jz3_jax.checkpoint.config` stays cheap for the config layer
    from jax.sharding import Mesh

    from jz3_jax.runtime.sharding import Rules

# Fields of ModelConfig that are not architecture: a checkpoint keeps the user's values for these.
RUNTIME_FIELDS = ("checkpoint", "tokenizer", "param_dtype", "dtype", "remat", "scan_layers", "attention",
                  "moe_capacity_factor")


def checkpoint_kind(path: str | Path) -> str:
    """"gguf", "orbax" or "hf" for a checkpoint path; CheckpointError if it is none of them."""
    from jz3_jax.checkpoint.orbax_io import is_orbax_checkpoint

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        raise CheckpointError(f"checkpoint {path} is a file but not .gguf (expected a directory or a .gguf file)")
    if is_orbax_checkpoint(path):
        return "orbax"
    if (path / "config.json").is_file():
        return "hf"
    raise CheckpointError(f"checkpoint {path}: neither a Hugging Face dir (config.json) nor an orbax checkpoint")


def _runtime(cfg: ModelConfig) -> dict:
    return {name: getattr(cfg, name) for name in RUNTIME_FIELDS}


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """The architecture of `cfg.checkpoint` (read from its metadata) with `cfg`'s runtime fields.

    Without a checkpoint, `cfg` itself (a randomly initialised model)."""
    if not cfg.checkpoint:
        return cfg
    kind = checkpoint_kind(cfg.checkpoint)
    if kind == "hf":
        from jz3_jax.model.hf_config import model_config_from_hf, read_hf_config

        return model_config_from_hf(read_hf_config(cfg.checkpoint), **_runtime(cfg))
    if kind == "gguf":
        from jz3_jax.checkpoint.gguf_reader import gguf_hf_config
        from jz3_jax.model.hf_config import model_config_from_hf

        return model_config_from_hf(gguf_hf_config(cfg.checkpoint), **_runtime(cfg))
    from jz3_jax.checkpoint.orbax_io import read_orbax_config

    return dataclasses.replace(read_orbax_config(cfg.checkpoint), **_runtime(cfg))


def load_model(cfg: ModelConfig, mesh: Mesh, rules: Rules, seed: int = 0):
    """(model, resolved ModelConfig): `cfg.checkpoint` loaded into its shardings, or random init."""
    resolved = resolve_model_config(cfg)
    if not cfg.checkpoint:
        from jz3_jax.model.factory import init_model

        return init_model(resolved, mesh, rules, seed), resolved
    kind = checkpoint_kind(cfg.checkpoint)
    if kind == "orbax":
        from jz3_jax.checkpoint.orbax_io import load_orbax

        return load_orbax(cfg.checkpoint, resolved, mesh, rules), resolved
    from jz3_jax.checkpoint.fill import load_tensors

    if kind == "hf":
        from jz3_jax.checkpoint.safetensors_io import iter_safetensors

        tensors = iter_safetensors(cfg.checkpoint)
    else:
        from jz3_jax.checkpoint.gguf_reader import iter_gguf_tensors

        tensors = ((name, array, cfg.checkpoint) for name, array in iter_gguf_tensors(cfg.checkpoint))
    return load_tensors(resolved, tensors, mesh, rules), resolved


def own_tokenizer_path(checkpoint: str) -> str:
    """The tokenizer `checkpoint` carries: the GGUF file, a HF dir with tokenizer files, an orbax
    checkpoint's `tokenizer/` dir; "" when it has none (or does not exist)."""
    if not checkpoint or not Path(checkpoint).exists():
        return ""
    kind = checkpoint_kind(checkpoint)
    if kind == "gguf":
        return checkpoint
    if kind == "orbax":
        path = Path(checkpoint) / "tokenizer"
        return str(path) if path.is_dir() else ""
    has_files = any((Path(checkpoint) / name).is_file() for name in ("tokenizer.json", "tokenizer.model"))
    return checkpoint if has_files else ""


def default_tokenizer_path(cfg: ModelConfig) -> str:
    """`model.tokenizer`, else the checkpoint's own tokenizer (HF dir, orbax tokenizer/ dir or GGUF)."""
    if cfg.tokenizer:
        return cfg.tokenizer
    if not cfg.checkpoint:
        return ""
    if checkpoint_kind(cfg.checkpoint) == "orbax":
        path = Path(cfg.checkpoint) / "tokenizer"
        return str(path) if path.is_dir() else ""
    return cfg.checkpoint


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


def load_stage_tokenizer(model_cfg, logger):
    """The tokenizer for a model config: `model.tokenizer` (must load) or the checkpoint's own (if any)."""
    from jz3_jax.tokenizer import TokenizerError, load_tokenizer

    path = default_tokenizer_path(model_cfg)
    if not path:
        return None
    try:
        return load_tokenizer(path)
    except TokenizerError:
        if model_cfg.tokenizer:
            raise
        logger.info("no tokenizer found in %s; continuing without one", path)
        return None


__all__ = ["CheckpointError", "checkpoint_kind", "resolve_model_config", "load_model", "default_tokenizer_path",
           "own_tokenizer_path", "check_vocab_matches", "load_stage_tokenizer"]
