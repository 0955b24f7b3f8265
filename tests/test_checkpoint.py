"""Checkpoint import/export: round trips through orbax and HF, bf16, sharded files, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM

from hf_models import make_hf_model
from jz3_jax.checkpoint import CheckpointError, load_model
from jz3_jax.checkpoint.hf_export import export_hf
from jz3_jax.checkpoint.orbax_io import save_orbax
from jz3_jax.config.schema import DEFAULT_RULES, MeshConfig
from jz3_jax.model.config import ModelConfig
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import parse_rules

RULES = parse_rules(DEFAULT_RULES)
TOKENS = np.random.default_rng(0).integers(0, 128, (2, 10))


@pytest.fixture(scope="module")
def mesh():
    return build_mesh(MeshConfig())


def _hf_logits(path) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.from_numpy(TOKENS)).logits.numpy()


@nnx.jit
def _forward(model, tokens):
    return model(tokens)[0]


def test_hf_orbax_hf_round_trip(tmp_path, mesh):
    original = make_hf_model("qwen2")
    original.save_pretrained(tmp_path / "hf")
    with torch.no_grad():
        reference = original(torch.from_numpy(TOKENS)).logits.numpy()
    model, _ = load_model(ModelConfig(checkpoint=str(tmp_path / "hf")), mesh, RULES)
    save_orbax(model, tmp_path / "orbax")
    # Restore into the other layer layout (stacked for scan) to exercise the on-device conversion (restack) too.
    restored, cfg = load_model(ModelConfig(checkpoint=str(tmp_path / "orbax"), scan_layers=True), mesh, RULES)
    assert cfg.family == "qwen2" and cfg.qkv_bias and cfg.scan_layers
    export_hf(restored, tmp_path / "export")
    assert np.abs(_hf_logits(tmp_path / "export") - reference).max() <= 1e-5
    ours = np.asarray(_forward(restored, jnp.asarray(TOKENS, jnp.int32)))
    assert np.abs(ours - reference).max() <= 1e-4


def test_sharded_export_writes_index_and_loads(tmp_path, mesh):
    make_hf_model("llama").save_pretrained(tmp_path / "hf")
    model, _ = load_model(ModelConfig(checkpoint=str(tmp_path / "hf")), mesh, RULES)
    export_hf(model, tmp_path / "export", max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "export" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert np.abs(_hf_logits(tmp_path / "export") - _hf_logits(tmp_path / "hf")).max() <= 1e-5
    # and our importer reads the sharded directory back
    again, _ = load_model(ModelConfig(checkpoint=str(tmp_path / "export")), mesh, RULES)
    assert np.array_equal(np.asarray(again.embed[...]), np.asarray(model.embed[...]))


def test_bf16_checkpoint_imports(tmp_path, mesh):
    make_hf_model("llama").to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    stored = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert stored["model.embed_tokens.weight"].dtype == ml_dtypes.bfloat16
    model, _ = load_model(ModelConfig(checkpoint=str(tmp_path / "hf"), param_dtype="bfloat16", dtype="bfloat16"),
                          mesh, RULES)
    assert model.embed[...].dtype == jnp.bfloat16
    assert np.array_equal(np.asarray(model.embed[...]).astype(np.float32),
                          stored["model.embed_tokens.weight"].astype(np.float32))
    up = stored["model.layers.1.mlp.up_proj.weight"].astype(np.float32)
    assert np.array_equal(np.asarray(model.layers[1].mlp.up[...]).astype(np.float32), up.T)


# --- bad input, through the `convert` stage: exit 2, message names the file/tensor, nothing written


def _convert(run_launch, src, dst, tmp_path):
    return run_launch("convert", "--config", "configs/tiny.py", "--run-dir", str(tmp_path / "run"),
                      f"convert.src={src}", f"convert.dst={dst}", "convert.dst_format=hf")


def _assert_refused(result, dst: Path, *needles: str):
    assert result.returncode == 2, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert not dst.exists()
    assert not any(p.name.startswith(f".{dst.name}") for p in dst.parent.iterdir())


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_hf")
    make_hf_model("llama").save_pretrained(path)
    return path


def test_convert_refuses_directory_without_weights(run_launch, tiny_hf, tmp_path):
    src = tmp_path / "noweights"
    src.mkdir()
    shutil.copy(tiny_hf / "config.json", src / "config.json")
    _assert_refused(_convert(run_launch, src, tmp_path / "out", tmp_path), tmp_path / "out", str(src), "no model weights")


def test_convert_refuses_truncated_safetensors(run_launch, tiny_hf, tmp_path):
    src = tmp_path / "truncated"
    shutil.copytree(tiny_hf, src)
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _assert_refused(_convert(run_launch, src, tmp_path / "out", tmp_path), tmp_path / "out", str(weights))


def test_convert_refuses_unsupported_architecture(run_launch, tiny_hf, tmp_path):
    src = tmp_path / "gpt2"
    shutil.copytree(tiny_hf, src)
    config = json.loads((src / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (src / "config.json").write_text(json.dumps(config))
    _assert_refused(_convert(run_launch, src, tmp_path / "out", tmp_path), tmp_path / "out",
                    "GPT2LMHeadModel", "LlamaForCausalLM")


def test_convert_refuses_wrong_tensor_shape(run_launch, tiny_hf, tmp_path):
    src = tmp_path / "badshape"
    shutil.copytree(tiny_hf, src)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((5, 64), np.float32)
    save_file(tensors, str(src / "model.safetensors"))
    _assert_refused(_convert(run_launch, src, tmp_path / "out", tmp_path), tmp_path / "out",
                    "model.layers.1.mlp.up_proj.weight", "(5, 64)")


def test_convert_to_orbax_and_back_to_hf(run_launch, tiny_hf, tmp_path):
    first = run_launch("convert", "--config", "configs/tiny.py", "--run-dir", str(tmp_path / "run"),
                       f"convert.src={tiny_hf}", f"convert.dst={tmp_path / 'orbax'}", "convert.dst_format=orbax")
    assert first.returncode == 0, first.stderr
    second = run_launch("convert", "--config", "configs/tiny.py", "--run-dir", str(tmp_path / "run2"),
                        f"convert.src={tmp_path / 'orbax'}", f"convert.dst={tmp_path / 'hf'}", "convert.dst_format=hf")
    assert second.returncode == 0, second.stderr
    assert np.abs(_hf_logits(tmp_path / "hf") - _hf_logits(tiny_hf)).max() <= 1e-5
    # an existing, non-empty destination is refused and left untouched
    again = _convert(run_launch, tiny_hf, tmp_path / "hf", tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert (tmp_path / "hf" / "config.json").is_file()


def test_missing_checkpoint_path_is_a_clear_error(mesh, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(ModelConfig(checkpoint=str(tmp_path / "nope")), mesh, RULES)
