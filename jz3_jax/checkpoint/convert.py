"""The `convert` stage: HF dir / orbax dir / .gguf file -> orbax or HF directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import jax

from jz3_jax.checkpoint import open_checkpoint, stage_tokenizer
from jz3_jax.checkpoint.errors import CheckpointError
from jz3_jax.errors import ConfigError
from jz3_jax.runtime.mesh import mesh_and_rules

if TYPE_CHECKING:
    from jz3_jax.checkpoint.spec import ConvertSpec
    from jz3_jax.stages import StageContext

FORMATS = ("orbax", "hf")


def run(spec: ConvertSpec, ctx: StageContext) -> None:
    """Load `convert.src` (or `model.checkpoint`) and write it to `convert.dst` as `convert.dst_format`."""
    src = spec.convert.src or spec.model.checkpoint
    if not src:
        raise ConfigError("convert needs convert.src=PATH (a HF dir, an orbax checkpoint dir or a .gguf file)")
    if not spec.convert.dst:
        raise ConfigError("convert needs convert.dst=DIR")
    if spec.convert.dst_format not in FORMATS:
        raise ConfigError(f"convert.dst_format must be one of {', '.join(FORMATS)}, got {spec.convert.dst_format!r}")
    dst = Path(spec.convert.dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise CheckpointError(f"destination {dst} already exists and is not empty")
    opened = open_checkpoint(src)
    mesh, rules = mesh_and_rules(spec.mesh)
    model_cfg = dataclasses.replace(spec.model, checkpoint=src)
    ctx.logger.info("convert: loading %s checkpoint %s", opened.kind, src)
    with jax.set_mesh(mesh):
        model = opened.load(model_cfg, mesh, rules)
    resolved = model.cfg
    tokenizer = stage_tokenizer(model_cfg, opened, ctx.logger)
    if spec.convert.dst_format == "hf":
        from jz3_jax.checkpoint.hf_export import export_hf

        export_hf(model, dst, tokenizer)
    else:
        from jz3_jax.checkpoint.orbax_io import save_orbax

        save_orbax(model, dst, tokenizer)
    ctx.logger.info("convert: wrote %s (%s, %d layers, hidden %d) to %s", resolved.family, spec.convert.dst_format,
                    resolved.num_layers, resolved.hidden_size, dst)
