"""Build an `Engine` from the root config: model on the mesh, tokenizer, EOS ids, engine sizes."""

from __future__ import annotations

import dataclasses
import logging

import jax

from jz3_jax.decoding.engine import Engine
from jz3_jax.decoding.sampling import SamplingParams


@dataclasses.dataclass
class LoadedEngine:
    engine: Engine
    tokenizer: object | None
    model_cfg: object  # the resolved ModelConfig
    mesh: jax.sharding.Mesh


def eos_ids_of(model_cfg, tokenizer) -> list[int]:
    """Token ids that end a generation: the model config's EOS and the tokenizer's EOS."""
    ids = {model_cfg.eos_token_id}
    if tokenizer is not None and tokenizer.eos_id is not None:
        ids.add(tokenizer.eos_id)
    return sorted(i for i in ids if i is not None and 0 <= i < model_cfg.vocab_size)


def load_engine(cfg, logger: logging.Logger, max_batch: int | None = None, local: bool = False) -> LoadedEngine:
    """The engine for `cfg.model` on `cfg.mesh` with `cfg.engine` sizes (`max_batch` overrides).

    `local` builds the mesh from this process's devices only: each process then runs its own
    engine replica on its own requests (bulk synthesis), with no cross-process collectives.
    """
    from jz3_jax.checkpoint import load_model, load_stage_tokenizer
    from jz3_jax.runtime.mesh import build_mesh
    from jz3_jax.runtime.sharding import parse_rules

    mesh = build_mesh(cfg.mesh, jax.local_devices() if local else None)
    rules = parse_rules(cfg.mesh.rules)
    tokenizer = load_stage_tokenizer(cfg.model, logger)
    with jax.set_mesh(mesh):
        model, resolved = load_model(cfg.model, mesh, rules, cfg.seed)
        engine = Engine(model, max_batch=max_batch or cfg.engine.max_batch, max_seq_len=cfg.engine.max_seq_len,
                        eos_ids=eos_ids_of(resolved, tokenizer), tokenizer=tokenizer,
                        steps_per_dispatch=cfg.engine.steps_per_dispatch, prompt_bucket=cfg.engine.prompt_bucket,
                        mesh=mesh)
    return LoadedEngine(engine, tokenizer, resolved, mesh)


def sampling_from_config(cfg, **changes) -> SamplingParams:
    """`SamplingParams` from the `sampling` section (seed as given; `changes` override fields)."""
    s = cfg.sampling
    values = dict(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_new_tokens=s.max_new_tokens,
                  seed=s.seed)
    values.update(changes)
    return SamplingParams(**values)
