"""A checkpoint opened once: its kind, architecture and own tokenizer, and a loader that reuses what was read.

`open_checkpoint(path)` reads each metadata file once (a HF dir's `config.json`, an orbax checkpoint's
`model_config.json`, a GGUF file's header, memory-mapped) and keeps what the loader needs, so loading
the weights (and, for a GGUF, the tokenizer) never opens those files again.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from jz3_jax.checkpoint.errors import CheckpointError
from jz3_jax.model.config import ModelConfig, architecture_of, with_architecture

if TYPE_CHECKING:  # kept out of the import so opening stays cheap for the launcher
    from jax.sharding import Mesh

    from jz3_jax.model.decoder import Decoder
    from jz3_jax.runtime.sharding import Rules
    from jz3_jax.tokenizer import Tokenizer

KINDS = ("hf", "orbax", "gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def checkpoint_kind(path: str | Path) -> str:
    """"gguf", "orbax" or "hf" for a checkpoint path (from names only: no file is opened);
    CheckpointError if it is none of them."""
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


def _own_tokenizer(kind: str, path: Path) -> str:
    if kind == "gguf":
        return str(path)
    if kind == "orbax":
        return str(path / "tokenizer") if (path / "tokenizer").is_dir() else ""
    return str(path) if any((path / name).is_file() for name in TOKENIZER_FILES) else ""


def own_tokenizer_path(checkpoint: str) -> str:
    """The tokenizer `checkpoint` carries: the GGUF file, a HF dir with tokenizer files, an orbax
    checkpoint's `tokenizer/` dir; "" when it has none (or does not exist). Opens no file."""
    if not checkpoint or not Path(checkpoint).exists():
        return ""
    return _own_tokenizer(checkpoint_kind(checkpoint), Path(checkpoint))


@dataclasses.dataclass(frozen=True, eq=False)
class OpenedCheckpoint:
    """A checkpoint whose metadata has been read (once).

    kind: "hf", "orbax" or "gguf"; architecture: the architecture fields of `ModelConfig` it fixes;
    tokenizer_path: its own tokenizer ("" if none); header: what the loader reuses (the HF config
    dict, the orbax checkpoint's saved ModelConfig, or the open `GGUFFile`).
    """

    kind: str
    path: str
    architecture: Mapping[str, Any]
    tokenizer_path: str
    header: Any = dataclasses.field(repr=False)

    def resolve(self, cfg: ModelConfig) -> ModelConfig:
        """`cfg` (a `model` section) with this checkpoint's architecture: its source and numerics are kept."""
        return with_architecture(cfg, self.architecture)

    def load(self, cfg: ModelConfig, mesh: Mesh, rules: Rules) -> Decoder:
        """The weights streamed into their shardings, with `cfg`'s numerics (its architecture is ours)."""
        cfg = self.resolve(cfg)
        if self.kind == "orbax":
            from jz3_jax.checkpoint.orbax_io import load_orbax

            return load_orbax(self.path, cfg, mesh, rules, saved_cfg=self.header)
        from jz3_jax.checkpoint.fill import load_tensors

        if self.kind == "hf":
            from jz3_jax.checkpoint.safetensors_io import iter_safetensors

            tensors = iter_safetensors(self.path)
        else:
            tensors = ((name, array, self.path) for name, array in self.header.tensors())
        return load_tensors(cfg, tensors, mesh, rules)

    def load_tokenizer(self) -> Tokenizer:
        """The checkpoint's own tokenizer (a GGUF's from the header already read); TokenizerError if none."""
        from jz3_jax.tokenizer import TokenizerError, load_gguf_tokenizer, load_tokenizer

        if not self.tokenizer_path:
            raise TokenizerError(f"checkpoint {self.path} has no tokenizer")
        if self.kind == "gguf":
            return load_gguf_tokenizer(self.path, self.header.reader)
        return load_tokenizer(self.tokenizer_path)


def open_checkpoint(path: str | Path) -> OpenedCheckpoint:
    """Open a HF directory, an orbax checkpoint directory or a `.gguf` file: read its metadata once."""
    from jz3_jax.model.hf_config import model_config_from_hf

    kind = checkpoint_kind(path)
    path = Path(path)
    if kind == "gguf":
        from jz3_jax.checkpoint.gguf_reader import open_gguf

        header = open_gguf(str(path))
        architecture = architecture_of(model_config_from_hf(header.hf_config))
    elif kind == "hf":
        from jz3_jax.model.hf_config import read_hf_config

        header = read_hf_config(path)
        architecture = architecture_of(model_config_from_hf(header))
    else:
        from jz3_jax.checkpoint.orbax_io import read_orbax_config

        header = read_orbax_config(path)
        architecture = architecture_of(header)
    return OpenedCheckpoint(kind, str(path), types.MappingProxyType(architecture), _own_tokenizer(kind, path), header)
