"""Checkpoints: load any supported source into a sharded model, save as orbax or Hugging Face.

Sources: a HF directory (safetensors, one file or sharded with an index), an orbax checkpoint
directory written by this project, or a `.gguf` file. `open_checkpoint` reads a source's metadata
once (`opened.py`); `prepare_model` is how a stage gets its tokenizer, checked config and weights
(`load.py`).
"""

from __future__ import annotations

from jz3_jax.checkpoint.errors import CheckpointError
from jz3_jax.checkpoint.load import (PreparedModel, check_vocab_matches, load_model, prepare_model,
                                     resolve_model_config, stage_tokenizer)
from jz3_jax.checkpoint.opened import OpenedCheckpoint, checkpoint_kind, open_checkpoint, own_tokenizer_path

__all__ = ["CheckpointError", "OpenedCheckpoint", "PreparedModel", "check_vocab_matches", "checkpoint_kind",
           "load_model", "open_checkpoint", "own_tokenizer_path", "prepare_model", "resolve_model_config",
           "stage_tokenizer"]
