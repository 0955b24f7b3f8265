"""Native checkpoints: the parameters as an orbax checkpoint plus the model config beside them.

Layout of a model checkpoint directory:
    params/            orbax StandardCheckpointer output (the nnx.Param state)
    model_config.json  the ModelConfig the parameters were saved with
    tokenizer/         the tokenizer files, when the source had a tokenizer
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from jz3_jax.checkpoint.errors import CheckpointError
from jz3_jax.checkpoint.hf_export import finish_destination, prepare_destination
from jz3_jax.model.config import ModelConfig, without_source
from jz3_jax.model.decoder import Decoder
from jz3_jax.model.factory import abstract_model, model_shardings, restack
from jz3_jax.runtime.sharding import Rules

CONFIG_NAME = "model_config.json"


def is_orbax_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a model checkpoint directory written by `save_orbax`."""
    return (Path(path) / CONFIG_NAME).is_file() and (Path(path) / "params").is_dir()


def read_orbax_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored beside an orbax checkpoint's parameters."""
    file = Path(path) / CONFIG_NAME
    try:
        data = json.loads(file.read_text())
        return ModelConfig(**data)
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{file}: cannot read the model config ({e})") from None


def save_orbax(model: Decoder, dst: str | Path, tokenizer=None) -> Path:
    """Write the model's parameters and config to `dst` (nothing appears at `dst` until complete)."""
    writer = jax.process_index() == 0
    dst, tmp = prepare_destination(dst) if writer else (Path(dst), None)
    tmp = multihost_tmp(tmp, dst)
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save((tmp / "params").absolute(), nnx.state(model, nnx.Param))
        checkpointer.wait_until_finished()
        if writer:
            saved = without_source(model.cfg)
            (tmp / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(saved), indent=2))
            if tokenizer is not None:
                tokenizer.save(str(tmp / "tokenizer"))
            finish_destination(tmp, dst)
        return dst
    except BaseException:
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def multihost_tmp(tmp: Path | None, dst: Path) -> Path:
    """Every process must pass orbax the same directory: process 0's temporary one."""
    return tmp if tmp is not None else dst.parent / f".{dst.name}.partial"


def load_orbax(path: str | Path, cfg: ModelConfig, mesh: Mesh, rules: Rules,
               saved_cfg: ModelConfig | None = None) -> Decoder:
    """Restore an orbax model checkpoint straight into its shardings.

    `cfg` must describe the same architecture; if its `scan_layers` differs from the saved
    layout, the checkpoint is restored as saved and converted on device (`restack`).
    `saved_cfg`: the checkpoint's `read_orbax_config` when already read (else it is read here).
    """
    saved_cfg = saved_cfg if saved_cfg is not None else read_orbax_config(path)
    restore_cfg = dataclasses.replace(cfg, scan_layers=saved_cfg.scan_layers)
    graphdef, abstract_state, shardings = model_shardings(abstract_model(restore_cfg, rules), rules, mesh)
    # The decoder holds only nnx.Param variables, so its whole state is what `save_orbax` wrote.
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
    try:
        restored = ocp.StandardCheckpointer().restore((Path(path) / "params").absolute(), target)
    except Exception as e:  # orbax raises many types; name the checkpoint
        raise CheckpointError(f"{path}: cannot restore orbax checkpoint ({type(e).__name__}: {e})") from None
    model = nnx.merge(graphdef, restored)
    return restack(model, cfg.scan_layers, mesh, rules)
