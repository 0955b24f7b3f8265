"""The `compile` stage: TPU topology names, batch checks, the recipe configs, and one real
ahead-of-time compile of a small model for a v5p-16 (8 chips) through the launcher.

The compile test needs libtpu (the `tpu` extra); it is skipped without it. Everything else runs
on plain CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import types

import pytest

from helpers import REPO_ROOT, subprocess_env
from jz3_jax.config import ConfigError, load_config
from jz3_jax.train import compile as aot

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason="libtpu is not installed (pip install 'jax[tpu]==<jax version>'): no TPU compiler")

# Runs the stage through the launcher; registers it first if the registry does not list it yet.
LAUNCH = """
import sys
from jz3_jax.stages import registry
stage = registry.STAGES.get("compile")
if stage is None or stage.target is None:
    registry.STAGES["compile"] = registry.Stage("compile", "ahead-of-time compile", "jz3_jax.train.compile:run")
from jz3_jax.launch import main
sys.exit(main(["compile", *sys.argv[1:]]))
"""


# --- topology names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, chips, topology, wrap", [
    ("v5p-8", 4, "v5p:2x2x1", False),
    ("v5p-16", 8, "v5p:2x2x2", False),
    ("v5p-64", 32, "v5p:2x4x4", False),
    ("v5p-128", 64, "v5p:4x4x4", True),  # a full cube: wrap-around links on every axis
    ("v4-32", 16, "v4:2x2x4", False),
    ("v5e-16", 16, "v5e:4x4", False),
    ("v5litepod-16", 16, "v5e:4x4", False),
    ("v6e-8", 8, "v6e:2x4", False),
    ("V5P-32", 16, "v5p:2x2x4", False),
])
def test_topology_names_follow_cloud_tpu_naming(name, chips, topology, wrap):
    spec = aot.parse_topology(name)
    assert (spec.chips, spec.topology_name) == (chips, topology)
    assert spec.wrap[0] == wrap
    assert spec.chip_config_name == ("megacore" if spec.generation in ("v4", "v5p") else "default")


def test_topology_hbm_per_generation():
    gib = 1024**3
    assert {g: aot.parse_topology(n).hbm_bytes // gib
            for g, n in [("v4", "v4-8"), ("v5e", "v5e-4"), ("v5p", "v5p-8"), ("v6e", "v6e-4")]} == \
        {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


@pytest.mark.parametrize("name", ["v5p-63", "v5p-9", "v7-8", "tpu", "v5e-3", ""])
def test_unknown_topology_lists_supported_ones(name):
    with pytest.raises(ConfigError, match="supported: .*v5p-64"):
        aot.parse_topology(name)


# --- batch divisibility --------------------------------------------------------------------------


def _fake_mesh(**shape):
    return types.SimpleNamespace(shape={"data": 1, "fsdp": 1, "tensor": 1, **shape})


def test_batch_spec_follows_rules():
    spec = aot.check_batch(16, 256, {"batch": ("data", "fsdp"), "length": ()}, _fake_mesh(fsdp=4, tensor=2))
    assert tuple(spec) == (None, "fsdp", None)


def test_non_dividing_batch_or_length_is_a_config_error():
    rules = {"batch": ("data", "fsdp"), "length": ("tensor",)}
    with pytest.raises(ConfigError, match="length dimension \\(255\\).*tensor"):
        aot.check_batch(16, 255, rules, _fake_mesh(fsdp=4, tensor=2))
    with pytest.raises(ConfigError, match="batch dimension \\(6\\)"):
        aot.check_batch(6, 256, rules, _fake_mesh(fsdp=4))


# --- the stage's failure path ----------------------------------------------------------------------


def test_does_not_fit_writes_report_then_raises(tmp_path, monkeypatch):
    import logging

    report = {"memory_per_device": {"total_bytes": 200 * 2**30, "hbm_bytes": 95 * 2**30},
              "topology": {"name": "v5p-16"}, "fits": False}
    monkeypatch.setitem(aot.PROGRAMS, "train", aot.CompiledProgram(lambda cfg, log: report, lambda r: "summary",
                                                                   "use more chips"))
    ctx = types.SimpleNamespace(stage_dir=tmp_path / "compile", logger=logging.getLogger("test"))
    cfg = types.SimpleNamespace(compile=types.SimpleNamespace(program="train"))
    with pytest.raises(aot.DoesNotFit, match="200.00 GiB per device .*: use more chips"):
        aot.run(cfg, ctx)
    assert json.loads((tmp_path / "compile" / "compile.json").read_text())["fits"] is False
    assert issubclass(aot.DoesNotFit, aot.UserError)  # the launcher exits 2


# --- the recipe configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, vocab, layers, global_batch", [
    ("pretrain_mistral7b", 32000, 32, 512),
    ("pretrain_llama3_8b", 128256, 32, 512),
    ("sft_synthesizer_deepseekmath7b", 102400, 30, 32),
    ("tiny_compile", 1024, 2, 16),
])
def test_recipe_configs_are_consistent(name, vocab, layers, global_batch):
    cfg = load_config(REPO_ROOT / "configs" / f"{name}.py")
    assert (cfg.model.vocab_size, cfg.model.num_layers, cfg.train.global_batch_size) == (vocab, layers, global_batch)
    spec = aot.parse_topology(cfg.compile.topology)
    assert cfg.compile.per_device_batch * spec.chips * cfg.train.grad_accum == global_batch
    assert cfg.data.max_length % 128 == 0 or name == "tiny_compile"
    assert cfg.model.checkpoint == ""  # the architecture is written out: compile reads no weights


def test_recipe_config_prints_on_cpu(run_launch):
    proc = run_launch("pretrain", "--config", "configs/pretrain_mistral7b.py", "--print-config")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["compile"]["topology"] == "v5p-64" and cfg["model"]["sliding_window"] == 4096


# --- a real ahead-of-time compile ------------------------------------------------------------------


def _expected_bytes_per_device(m, shards: int) -> int:
    """float32 params + AdamW mu and nu (12 bytes a parameter): matrices split over all `shards`
    devices (every dimension of configs/tiny_compile.py divides), norms replicated."""
    e, h, kv, d, f, v, n = (m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim, m.intermediate_size,
                            m.vocab_size, m.num_layers)
    matrices = 2 * v * e + n * (2 * e * h * d + 2 * e * kv * d + 3 * e * f)
    norms = n * 2 * e + e
    return 12 * (matrices // shards + norms)


@needs_libtpu
def test_compile_small_model_for_v5p_16(tmp_path):
    cfg = load_config(REPO_ROOT / "configs" / "tiny_compile.py")
    env = subprocess_env()
    env.pop("JAX_PLATFORMS")  # the launcher picks the CPU backend itself; compile still reaches libtpu
    proc = subprocess.run([sys.executable, "-c", LAUNCH, "--config", "configs/tiny_compile.py",
                           "--run-dir", str(tmp_path), "train.loss_chunk=64", "compile.step_time_s=0.5"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fits" in proc.stdout
    report = json.loads((tmp_path / "compile" / "compile.json").read_text())

    assert report["topology"]["devices"] == 8 and report["topology"]["device_kind"].startswith("TPU v5")
    assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert report["batch"]["spec"] == [None, "fsdp", None]  # [accum, rows, length]: rows over data x fsdp
    assert report["batch"]["global_rows"] == cfg.train.global_batch_size

    specs = report["param_shardings"]
    # stacked (scanned) layers lead with the unsharded "layers" axis; rules embed=fsdp, heads/mlp/vocab=tensor
    assert specs["layers.attn.q"] == [None, "fsdp", "tensor", None]
    assert specs["layers.attn.o"] == [None, "tensor", None, "fsdp"]
    assert specs["layers.mlp.down"] == [None, "tensor", "fsdp"]
    assert specs["embed"] == ["tensor", "fsdp"] and specs["lm_head"] == ["fsdp", "tensor"]
    assert specs["layers.input_norm.weight"] == [None, None]
    assert report["replicated_not_divisible"] == []

    mem = report["memory_per_device"]
    expected_state = _expected_bytes_per_device(cfg.model, 8)
    batch = 5 * cfg.train.grad_accum * (cfg.compile.per_device_batch * 8 // 4) * cfg.data.max_length * 4
    # Every shard here is a whole number of (8, 128) float32 TPU tiles, so the compiler's argument
    # bytes are the analytic state + batch up to the scalars (step, Adam count), which TPU pads to
    # a tile each: allow 64 KiB (0.3% of the ~18 MiB). A sharding mistake would be off by >= 2x.
    assert abs(mem["argument_bytes"] - (expected_state + batch)) <= 64 * 1024, (mem, expected_state, batch)
    assert abs(mem["expected_state_bytes"] - expected_state) <= 64
    # the state is donated: the new state reuses the old buffers
    assert mem["alias_bytes"] >= 0.99 * expected_state
    # The peak holds at least the program, the state, the batch and one full set of float32 gradients
    # (the global norm for clipping needs them all at once): a third of the state, counted by hand above.
    floor = mem["generated_code_bytes"] + expected_state + batch + expected_state // 3
    assert mem["total_bytes"] >= floor, (mem, expected_state)
    assert mem["hbm_bytes"] == 95 * 1024**3  # a v5p chip
    assert report["fits"] and mem["total_bytes"] < mem["hbm_bytes"]

    flops = report["flops"]
    assert report["model"]["params"] == 12_585_472
    assert flops["analytic_per_device"] == pytest.approx(
        flops["analytic_per_token"] * cfg.train.global_batch_size * cfg.data.max_length / 8)
    assert flops["compiled_per_device"] > 0

    # model.attention=auto is splash on TPU: its Pallas kernels (forward, and dq/dkv for the backward) are in
    # the compiled program; the MFU of the given step time is the step's model FLOPs over the chips' peak
    assert report["attention"]["resolved"] == "splash" and report["attention"]["splash_in_program"]
    assert {"splash_mha_fwd_segmented_residuals", "splash_mha_dq_segmented_no_residuals",
            "splash_mha_dkv_segmented_no_residuals"} <= set(report["attention"]["kernels"])
    assert report["loss_chunk"] == 64
    mfu = report["mfu"]
    assert mfu["peak_flops_per_device"] == 459e12  # v5p
    assert mfu["mfu"] == pytest.approx(flops["analytic_per_step"] / (0.5 * 8 * 459e12))
    assert "MFU" in proc.stdout and "splash_mha_fwd" in proc.stdout


def test_missing_libtpu_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    with pytest.raises(aot.TpuCompilerMissing, match=r"install the tpu extra: pip install 'jax\[tpu\]=="):
        aot.tpu_devices(aot.parse_topology("v5p-8"))


# --- the batch search, MFU, and the decode program ---------------------------------------------------


@pytest.mark.parametrize("start, largest, limit, want", [
    (16, 37, 512, 37),  # fits: double to 32, 64 fails, bisect
    (16, 5, 512, 5),  # does not fit: halve to 8, 4 fits, bisect
    (16, 0, 512, 0),  # nothing fits
    (16, 1000, 100, 100),  # the limit fits: stop there
    (1, 1, 512, 1),
])
def test_search_max_batch(start, largest, limit, want):
    calls = []

    def fits(b):
        calls.append(b)
        return b <= largest

    best, tried = aot.search_max_batch(fits, start, limit)
    assert best == want
    assert len(calls) == len(set(calls)) == len(tried)  # each batch compiled once
    assert len(calls) <= 2 * math.ceil(math.log2(limit)) + 2  # a search, not a scan
    assert all(tried[b] == (b <= largest) for b in tried)


def test_find_max_batch_counts_compile_time_out_of_memory_as_not_fitting(monkeypatch):
    hbm = 100

    def fake_compile(cfg, mesh, rules, rows):
        if rows > 40:
            raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm")
        return types.SimpleNamespace(rows=rows), None, 0.0, 0.0

    from jz3_jax.train import compile_train

    monkeypatch.setattr(compile_train, "_compile", fake_compile)
    monkeypatch.setattr(compile_train, "memory_of", lambda compiled, hbm: {"total_bytes": 3 * compiled.rows})
    monkeypatch.setattr(compile_train, "check_batch", lambda *a: None)
    cfg = types.SimpleNamespace(compile=types.SimpleNamespace(per_device_batch=4, max_batch_limit=64),
                                data=types.SimpleNamespace(max_length=128))
    found = compile_train._find_max_batch(cfg, None, None, 2, hbm, 3 * 8, lambda *a: None)
    assert found["per_device_batch"] == 16  # 3 x 16 x 2 = 96 <= 100; 17 x 2 = 34 rows -> 102
    assert found["tried"]["32"] == {"fits": False, "total_bytes": None}  # the compiler gave up
    assert found["tried"]["4"] == {"fits": True, "total_bytes": 24}  # the configured batch: not recompiled


def test_mfu_report():
    out = aot.mfu_report(4.59e15, 10, 459e12, 2.0)
    assert out["step_time_s_at_full_mfu"] == pytest.approx(1.0) and out["mfu"] == pytest.approx(0.5)
    assert aot.mfu_report(1e15, 10, None, 2.0)["mfu"] is None  # unknown chip
    assert aot.mfu_report(1e15, 10, 459e12, 0.0)["mfu"] is None  # no step time given
    assert aot.peak_flops_of("TPU v5 lite") == 197e12 and aot.peak_flops_of("TPU v5") == 459e12
    with pytest.raises(ConfigError, match="step_time_s"):
        aot.mfu_report(1e15, 10, 459e12, -1.0)


def test_unknown_program_is_a_config_error():
    cfg = types.SimpleNamespace(compile=types.SimpleNamespace(program="serve"))
    with pytest.raises(ConfigError, match="compile.program must be one of train, decode"):
        aot.run(cfg, None)


def test_single_host_8_chip_v5e_slice():
    assert aot.parse_topology("v5e-8").chips_per_host_bounds == (2, 4, 1)
    assert aot.parse_topology("v5e-16").chips_per_host_bounds == (2, 2, 1)
    assert aot.parse_topology("v5p-8").chips_per_host_bounds == (2, 2, 1)


@needs_libtpu
def test_compile_decode_program_for_v5p_8(tmp_path):
    """The engine's decode step on the 4 chips of a v5p-8 (tensor-parallel): the KV cache per chip is
    exactly layers x rows x positions x kv_heads / 4 x head_dim x 2 (k and v) x 2 bytes (bfloat16)."""
    cfg = load_config(REPO_ROOT / "configs" / "tiny_compile.py")
    env = subprocess_env()
    env.pop("JAX_PLATFORMS")
    proc = subprocess.run([sys.executable, "-c", LAUNCH, "--config", "configs/tiny_compile.py", "--run-dir",
                           str(tmp_path), "compile.program=decode", "compile.topology=v5p-8", "engine.max_batch=8",
                           "engine.max_seq_len=256"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "compile" / "compile.json").read_text())
    m = cfg.model
    assert report["program"] == "decode" and report["topology"]["devices"] == 4
    assert report["mesh"] == {"data": 1, "fsdp": 1, "tensor": 4}  # the engine mesh: tensor over the host
    mem = report["memory_per_device"]
    assert mem["kv_cache_bytes"] == m.num_layers * 8 * 256 * (m.num_kv_heads // 4) * m.head_dim * 2 * 2
    assert mem["weight_bytes"] == pytest.approx(4 * report["model"]["params"] / 4, rel=0.01)  # float32 over 4
    assert mem["argument_bytes"] >= mem["weights_plus_cache_bytes"]
    assert report["fits"] and "KV cache" in proc.stdout


@needs_libtpu
def test_compile_select_logra_program_for_v5p_8(tmp_path):
    """select's logra feature step on the 4 chips of a v5p-8 with a training mesh (fsdp 2 x tensor 2):
    LESS's LoRA layout, select.proj_dim split over the 16 adapted matrices, the parameters sharded."""
    env = subprocess_env()
    env.pop("JAX_PLATFORMS")
    proc = subprocess.run([sys.executable, "-c", LAUNCH, "--config", "configs/tiny_compile.py", "--run-dir",
                           str(tmp_path), "compile.program=select", "compile.topology=v5p-8", "mesh.fsdp=2"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "compile" / "compile.json").read_text())
    assert report["program"] == "select" and report["topology"]["devices"] == 4
    assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    g = report["logra"]
    assert g["lora"]["rank"] == 128 and g["k_in"] * g["k_out"] * 16 == g["feature_dim"] <= 8192
    mem = report["memory_per_device"]
    assert mem["argument_bytes"] >= mem["expected_state_bytes"] > 0
    assert report["fits"] and report["flops"]["analytic_per_example"] > 0 and "FLOPs per example" in proc.stdout
