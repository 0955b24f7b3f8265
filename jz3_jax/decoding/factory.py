"""Build an `Engine` from a stage's decoding sections (`DecodeSpec`: model, engine, sampling, seed):
model on the engine mesh, tokenizer, EOS ids, engine sizes."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jz3_jax.checkpoint import prepare_model
from jz3_jax.decoding.attention import LAYOUTS, PAGED_KERNELS
from jz3_jax.decoding.engine import Engine
from jz3_jax.decoding.paging import pool_pages
from jz3_jax.errors import ConfigError
from jz3_jax.decoding.sampling import SamplingParams
from jz3_jax.runtime.config import MeshConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import Rules, parse_rules

if TYPE_CHECKING:
    from jz3_jax.decoding.config import EngineConfig, SamplingConfig
    from jz3_jax.decoding.spec import DecodeSpec


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


def engine_devices(mesh_cfg: MeshConfig, devices: list) -> list:
    """The devices an engine mesh spans: all of `devices`, or the first ones when every size of
    `mesh_cfg` is fixed and their product is smaller (e.g. `engine.mesh.tensor=1` on an 8-chip host)."""
    sizes = (mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor)
    if all(s > 0 for s in sizes) and math.prod(sizes) < len(devices):
        return devices[: math.prod(sizes)]
    return devices


def engine_mesh(engine_cfg: EngineConfig) -> tuple[jax.sharding.Mesh, Rules]:
    """The inference mesh (`engine.mesh` over this process's own devices) and its parsed rules.

    One engine replica per host: the mesh never spans processes, so a decode step has no
    cross-host collectives. It is separate from the training `mesh` section (whose default fsdp=-1 would
    all-gather every weight at every decode step); the default is tensor-parallel over all local devices.
    """
    mesh_cfg = engine_cfg.mesh
    mesh = build_mesh(mesh_cfg, engine_devices(mesh_cfg, jax.local_devices()))
    return mesh, parse_rules(mesh_cfg.rules)


def load_engine(spec: DecodeSpec, logger: logging.Logger, max_batch: int | None = None) -> LoadedEngine:
    """The engine for `spec.model` on the engine mesh (`engine_mesh`) with `spec.engine` sizes
    (`max_batch` overrides). Every process that calls it runs its own replica on its own requests."""
    ec = spec.engine
    if ec.decode_attention not in LAYOUTS:
        raise ConfigError(f"engine.decode_attention must be one of {', '.join(LAYOUTS)}; got {ec.decode_attention!r}")
    if ec.max_top_k < 1 or ec.prompt_bucket < 1:
        raise ConfigError(f"engine.max_top_k and engine.prompt_bucket must be >= 1; got {ec.max_top_k}, "
                          f"{ec.prompt_bucket}")
    if ec.max_logprobs < 0:
        raise ConfigError(f"engine.max_logprobs must be >= 0; got {ec.max_logprobs}")
    if ec.paged_kernel not in PAGED_KERNELS:
        raise ConfigError(f"engine.paged_kernel must be one of {', '.join(PAGED_KERNELS)}; got {ec.paged_kernel!r}")
    if ec.page_size < 1 or ec.num_pages < 0 or ec.kv_cache_gib < 0:
        raise ConfigError(f"engine.page_size must be >= 1, engine.num_pages and engine.kv_cache_gib >= 0; got "
                          f"{ec.page_size}, {ec.num_pages}, {ec.kv_cache_gib}")
    mesh, rules = engine_mesh(ec)
    logger.info("engine mesh %s over %d of this host's %d device(s)", dict(mesh.shape), mesh.size,
                jax.local_device_count())
    prepared = prepare_model(spec.model, logger)  # tokenizer and vocabulary checked before any weight is read
    tokenizer, resolved = prepared.tokenizer, prepared.config
    ec = dataclasses.replace(ec, max_batch=max_batch or ec.max_batch)
    num_pages = pool_pages(ec, resolved, jnp.dtype(resolved.dtype).itemsize) if ec.paged else 0
    if ec.paged and num_pages < 2:
        raise ConfigError(f"engine.num_pages / engine.kv_cache_gib give a pool of {num_pages} pages; at least 2 "
                          "(one is the scratch page) are needed")
    with jax.set_mesh(mesh):
        model = prepared.load(mesh, rules, spec.seed)
        engine = Engine(model, max_batch=ec.max_batch, max_seq_len=ec.max_seq_len,
                        eos_ids=eos_ids_of(resolved, tokenizer), tokenizer=tokenizer,
                        steps_per_dispatch=ec.steps_per_dispatch, prompt_bucket=ec.prompt_bucket,
                        mesh=mesh, max_top_k=ec.max_top_k, decode_attention=ec.decode_attention,
                        max_logprobs=ec.max_logprobs, paged=ec.paged, page_size=ec.page_size, num_pages=num_pages,
                        prefix_cache=ec.prefix_cache, paged_kernel=ec.paged_kernel)
    if engine.paged:
        logger.info("engine: paged KV cache, %d pages of %d tokens (%d rows at full length), prefix cache %s, "
                    "paged attention %s, max_top_k %d, prefill widths %s", engine.num_pages - 1, engine.page_size,
                    (engine.num_pages - 1) // -(-engine.max_seq_len // engine.page_size), engine.prefix_cache,
                    engine.paged_kernel, engine.max_top_k, list(engine.prefill_widths))
    else:
        logger.info("engine: decode attention %s, max_top_k %d, prefill widths %s", engine.decode_layout,
                    engine.max_top_k, list(engine.prefill_widths))
    return LoadedEngine(engine, tokenizer, resolved, mesh)


def warm_up(engine: Engine, logger: logging.Logger, logprobs: bool = False) -> int:
    """Compile every program the engine can run (`Engine.warm_up`; with `logprobs`, their
    log-probability variants too) and log how many; returns that number."""
    start = time.perf_counter()
    compiled = engine.warm_up(logprobs=logprobs)
    decode = len(engine.decode_buckets) if engine.paged else 1
    logger.info("engine warm-up: %d prefill shapes and %d decode step(s), %d programs compiled in %.1fs",
                len(engine.prefill_shapes()), decode, compiled, time.perf_counter() - start)
    return compiled


def sampling_from_config(s: SamplingConfig, **changes) -> SamplingParams:
    """`SamplingParams` from the `sampling` section (seed as given; `changes` override fields)."""
    values = dict(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_new_tokens=s.max_new_tokens,
                  seed=s.seed)
    values.update(changes)
    return SamplingParams(**values)
