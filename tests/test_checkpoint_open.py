"""A checkpoint is opened once: `open_checkpoint` / `prepare_model` read each file of a GGUF, a HF
directory and an orbax checkpoint once while loading its tokenizer and weights; `ModelConfig`'s
field groups (architecture, source, numerics).

Opens are counted with a `sys.addaudithook` "open" hook (every Python-level open: `open`, `io.open`,
`os.open`, numpy's memmap) plus wrappers around the two Rust openers the loaders call
(`safetensors.safe_open`, `tokenizers.Tokenizer.from_file`). Orbax's tensorstore reads its OCDBT data
files from C++, one read per array; those are orbax's own and are not counted here.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import sys

import jax
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from jz3_jax.checkpoint import open_checkpoint, prepare_model  # noqa: E402
from jz3_jax.checkpoint import safetensors_io  # noqa: E402
from jz3_jax.checkpoint.hf_export import export_hf  # noqa: E402
from jz3_jax.checkpoint.orbax_io import save_orbax  # noqa: E402
from jz3_jax.config.schema import DEFAULT_RULES, MeshConfig  # noqa: E402
from jz3_jax.model import config as model_config  # noqa: E402
from jz3_jax.model.config import ModelConfig  # noqa: E402
from jz3_jax.model.factory import init_model  # noqa: E402
from jz3_jax.runtime.mesh import build_mesh  # noqa: E402
from jz3_jax.runtime.sharding import parse_rules  # noqa: E402
from jz3_jax.tokenizer import hf_tokenizer, load_tokenizer  # noqa: E402

RULES = parse_rules(DEFAULT_RULES)
# The byte tokenizer's 259 ids (+1 merged token in the GGUF's vocabulary) and its BOS/EOS; an epsilon that
# float32 (GGUF's metadata type) holds exactly.
TINY = ModelConfig(vocab_size=260, bos_token_id=257, eos_token_id=258, rms_norm_eps=2.0**-17)
LOGGER = logging.getLogger("test_checkpoint_open")

_recording: list[collections.Counter] = []  # the counter of the load in progress, if any


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _recording and isinstance(args[0], (str, bytes, os.PathLike)):
        _recording[-1][os.path.realpath(os.fsdecode(args[0]))] += 1


sys.addaudithook(_audit)  # audit hooks cannot be removed: it counts only while `_recording` holds a counter


def _counted(opener):
    def wrapper(path, *args, **kwargs):
        if _recording:
            _recording[-1][os.path.realpath(os.fspath(path))] += 1
        return opener(path, *args, **kwargs)

    return wrapper


class _CountingBackend:
    """Stands in for `tokenizers.Tokenizer` in `hf_tokenizer` (a Rust type: its methods cannot be patched)."""

    from_file = staticmethod(_counted(hf_tokenizer.Backend.from_file))


def _write_gguf(path, hf_dir, tokenizer) -> None:
    """A llama.cpp-style F32 GGUF of the HF checkpoint in `hf_dir`, with a byte-level BPE tokenizer."""
    from safetensors.numpy import load_file
    from test_gguf_reader import gguf_name, llamacpp_permute

    cfg = TINY
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.resolved_head_dim)
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    vocab = sorted(tokenizer.backend.get_vocab().items(), key=lambda item: item[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list([token for token, _ in vocab] + ["ab"])
    writer.add_token_types([1] * 256 + [3, 3, 3] + [1])  # bytes, <pad> <s> </s> (control), "ab"
    writer.add_token_merges(["a b"])
    for name, array in load_file(str(hf_dir / "model.safetensors")).items():
        if ".q_proj." in name:
            array = llamacpp_permute(array, cfg.num_heads)
        elif ".k_proj." in name:
            array = llamacpp_permute(array, cfg.num_kv_heads)
        writer.add_tensor(gguf_name(name), np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def mesh():
    return build_mesh(MeshConfig())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, mesh):
    """{kind: path} of one tiny random model (and the byte tokenizer) saved as HF, orbax and GGUF."""
    base = tmp_path_factory.mktemp("opened")
    tokenizer = load_tokenizer("bytes")
    with jax.set_mesh(mesh):
        model = init_model(TINY, mesh, RULES, 0)
    export_hf(model, base / "hf", tokenizer)
    save_orbax(model, base / "orbax", tokenizer)
    _write_gguf(base / "tiny.gguf", base / "hf", tokenizer)
    return {"hf": base / "hf", "orbax": base / "orbax", "gguf": base / "tiny.gguf"}, np.asarray(model.embed[...])


# Files a load must have opened (at least these; every counted file exactly once).
EXPECTED = {
    "gguf": [""],
    "hf": ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"],
    "orbax": ["model_config.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"],
}


@pytest.mark.parametrize("kind", ["gguf", "hf", "orbax"])
def test_loading_opens_each_file_once(kind, checkpoints, mesh, monkeypatch):
    paths, embed = checkpoints
    root = os.path.realpath(paths[kind])
    monkeypatch.setattr(safetensors_io, "safe_open", _counted(safetensors_io.safe_open))
    monkeypatch.setattr(hf_tokenizer, "Backend", _CountingBackend)
    counts: collections.Counter = collections.Counter()
    _recording.append(counts)
    try:
        prepared = prepare_model(ModelConfig(checkpoint=str(paths[kind]), scan_layers=True), LOGGER,
                                 needed_by="this test")
        with jax.set_mesh(mesh):
            model = prepared.load(mesh, RULES)
    finally:
        _recording.remove(counts)
    ours = {path: n for path, n in counts.items() if path == root or path.startswith(root + os.sep)}
    assert ours and all(n == 1 for n in ours.values()), f"files opened more than once: {ours}"
    for name in EXPECTED[kind]:
        assert os.path.join(root, name).rstrip(os.sep) in ours, f"{name or root} was not read: {sorted(ours)}"
    assert prepared.opened.kind == kind and prepared.config.vocab_size == 260 and prepared.config.scan_layers
    assert prepared.tokenizer.vocab_size == (260 if kind == "gguf" else 259)
    np.testing.assert_allclose(np.asarray(model.embed[...]), embed, rtol=0, atol=0)


def test_open_checkpoint_reports_kind_architecture_and_tokenizer(checkpoints):
    paths, _ = checkpoints
    for kind, path in paths.items():
        opened = open_checkpoint(path)
        assert opened.kind == kind
        architecture = dict(opened.architecture)
        assert ModelConfig(**architecture).resolved_head_dim == TINY.resolved_head_dim
        assert {**architecture, "head_dim": 0} == model_config.architecture_of(TINY)  # HF and GGUF state head_dim
        own = {"gguf": path, "hf": path, "orbax": path / "tokenizer"}[kind]
        assert opened.tokenizer_path == str(own)
        resolved = opened.resolve(ModelConfig(checkpoint=str(path), dtype="bfloat16", remat="full"))
        assert (resolved.vocab_size, resolved.dtype, resolved.remat, resolved.checkpoint) == (
            260, "bfloat16", "full", str(path))


def test_model_config_fields_fall_into_three_groups():
    groups = {group: set(model_config.fields_of(group)) for group in model_config.GROUPS}
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set().union(*groups.values()) == names and sum(map(len, groups.values())) == len(names)
    assert groups["source"] == {"checkpoint", "tokenizer"}
    assert {"dtype", "param_dtype", "remat", "attention", "scan_layers", "moe_capacity_factor"} == groups["numerics"]
    user = ModelConfig(checkpoint="x", dtype="bfloat16", scan_layers=True, hidden_size=8)
    merged = model_config.with_architecture(user, ModelConfig(hidden_size=32, num_layers=5))
    assert (merged.hidden_size, merged.num_layers, merged.checkpoint, merged.dtype, merged.scan_layers) == (
        32, 5, "x", "bfloat16", True)
    saved = model_config.without_source(merged)
    assert (saved.checkpoint, saved.tokenizer, saved.dtype) == ("", "", "bfloat16")
    assert json.dumps(dataclasses.asdict(saved))  # still a plain dataclass: saved as orbax's model_config.json
