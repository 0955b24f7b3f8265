"""The `bench` stage: dispatch `bench.kind` to its benchmark."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from jz3_jax.errors import ConfigError
from jz3_jax.stages import StageContext, StageNotImplemented

if TYPE_CHECKING:
    from jz3_jax.bench.spec import BenchSpec

KINDS = {"forward": "jz3_jax.bench.forward", "train": "jz3_jax.bench.train", "decode": "jz3_jax.bench.decode",
         "influence": "jz3_jax.bench.influence", "synthesis": "jz3_jax.bench.synthesis"}


def run(spec: BenchSpec, ctx: StageContext) -> dict:
    kind = spec.bench.kind
    if kind not in KINDS:
        raise ConfigError(f"bench.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if KINDS[kind] is None:
        raise StageNotImplemented(f"bench.kind={kind} is not implemented yet")
    return importlib.import_module(KINDS[kind]).run(spec, ctx)
