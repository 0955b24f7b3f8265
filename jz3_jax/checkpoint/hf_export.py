"""Export a model to a Hugging Face directory that `transformers` loads.

The directory is written under a temporary name beside the destination and renamed into place
at the end, so a failure never leaves a half-written checkpoint at the destination.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from jz3_jax.checkpoint.errors import CheckpointError
from jz3_jax.checkpoint.hf_names import hf_layout, iter_hf_names
from jz3_jax.checkpoint.safetensors_io import INDEX_NAME
from jz3_jax.model.decoder import Decoder
from jz3_jax.model.layer_stack import is_stacked, layer_param
from jz3_jax.model.hf_config import hf_config_from_model


def _to_host(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def iter_model_tensors(model: Decoder) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, array in HF layout) for every parameter, one at a time, gathered to the host."""
    cfg = model.cfg
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for name, (path, layer, expert, _) in iter_hf_names(cfg):
        array = layer_param(flat, path, layer, is_stacked(cfg))
        if expert is not None:  # one expert of a stacked Mixtral expert parameter
            array = array[expert]
        yield name, hf_layout(name, _to_host(array), cfg)


def prepare_destination(dst: str | Path) -> tuple[Path, Path]:
    """(final path, temporary path) for writing `dst`; refuses to overwrite a non-empty destination."""
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise CheckpointError(f"destination {dst} already exists and is not empty")
    tmp = dst.parent / f".{dst.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return dst, tmp


def finish_destination(tmp: Path, dst: Path) -> None:
    """Move the fully written temporary directory into place."""
    if dst.exists():
        dst.rmdir()
    tmp.rename(dst)


def export_hf(model: Decoder, dst: str | Path, tokenizer=None, dtype: str | None = None,
              max_shard_bytes: int = 2 << 30) -> Path:
    """Write `dst` as a HF checkpoint: sharded safetensors + index, config.json,
    generation_config.json and (when given) the tokenizer files. Only process 0 writes."""
    cfg = model.cfg
    writer = jax.process_index() == 0
    dst, tmp = prepare_destination(dst) if writer else (Path(dst), None)
    out_dtype = np.dtype(jax.numpy.dtype(dtype or cfg.param_dtype))
    try:
        shard: dict[str, np.ndarray] = {}  # the file being filled; at most max_shard_bytes on the host
        files: list[str] = []
        weight_map: dict[str, int] = {}  # tensor name -> index of its file

        def flush():
            nonlocal shard
            if shard and writer:
                files.append(f"shard-{len(files):05d}.safetensors")
                save_file(shard, str(tmp / files[-1]), metadata={"format": "pt"})
            shard = {}

        for name, array in iter_model_tensors(model):  # every process gathers (a collective)
            array = np.ascontiguousarray(array.astype(out_dtype))
            if shard and sum(a.nbytes for a in shard.values()) + array.nbytes > max_shard_bytes:
                flush()
            shard[name] = array
            weight_map[name] = len(files)
        flush()
        if not writer:
            return dst
        final = [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))]
        for old, new in zip(files, final):
            (tmp / old).rename(tmp / new)
        if len(final) == 1:
            (tmp / final[0]).rename(tmp / "model.safetensors")
        else:
            index = {"metadata": {}, "weight_map": {n: final[i] for n, i in weight_map.items()}}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))
        hf = hf_config_from_model(cfg)
        hf["torch_dtype"] = str(out_dtype) if out_dtype != np.dtype("bfloat16") else "bfloat16"
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
                      "pad_token_id": cfg.pad_token_id}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        if tokenizer is not None:
            tokenizer.save(str(tmp))
        finish_destination(tmp, dst)
        return dst
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
