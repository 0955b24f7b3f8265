"""Stream tensors out of a Hugging Face checkpoint directory (one or many safetensors files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
from safetensors import SafetensorError, safe_open

from jz3_jax.checkpoint.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a HF checkpoint dir (from its index when sharded)."""
    directory = Path(directory)
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists weight files that do not exist: {', '.join(missing)}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
        hint = f" (found {', '.join(other)}: convert PyTorch weights to safetensors first)" if other else ""
        raise CheckpointError(f"{directory}: no model weights (*.safetensors){hint}")
    return files


def iter_safetensors(directory: str | Path) -> Iterator[tuple[str, np.ndarray, str]]:
    """Yield (name, array, file) one tensor at a time; bf16 comes back as ml_dtypes.bfloat16."""
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="numpy") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name), str(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None
