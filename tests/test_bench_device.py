"""`make bench-device` on CPU with BENCH_DEVICE_SMALL=1: the same command and code paths as on the
accelerator, on tiny shapes, with the packages the GPU image lacks made unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import REPO_ROOT, subprocess_env

FORBIDDEN = ("grain", "tensorflow_datasets", "openai", "math_verify", "fastapi")
KINDS = {"train": "train", "forward_b1": "forward", "decode_b1": "decode", "decode_b64": "decode",
         "decode_b256": "decode", "select_exact": "influence"}

# A sitecustomize on PYTHONPATH: every interpreter of the run (make's python and each benchmark's
# subprocess) gets a meta-path finder that refuses the packages the GPU image does not have.
BLOCKER = textwrap.dedent(f"""
    import sys

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {FORBIDDEN!r}:
                raise ImportError(f"{{name}} is blocked: the accelerator image does not have it")
            return None

    sys.meta_path.insert(0, _Block())
""")


def _blocking_env(tmp_path: Path) -> dict[str, str]:
    """The child environment (JAX on CPU) with the import blocker installed."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = subprocess_env()
    env["PYTHONPATH"] = ":".join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    return env


def test_the_blocker_refuses_the_forbidden_packages(tmp_path):
    code = ("import importlib\nfor name in %r:\n    try:\n        importlib.import_module(name)\n"
            "    except ImportError as e:\n        assert 'blocked' in str(e), e\n    else:\n"
            "        raise SystemExit(name + ' imported')\nimport json; print('ok')" % (FORBIDDEN,))
    proc = subprocess.run([sys.executable, "-c", code], env=_blocking_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_make_bench_device_small_runs_every_benchmark_without_the_forbidden_packages(tmp_path):
    out = tmp_path / "bench" / "results.jsonl"
    proc = subprocess.run(["make", "-s", "bench-device", "BENCH_DEVICE_SMALL=1", f"BENCH_DEVICE_OUT={out}",
                           f"PYTHON_BENCH={sys.executable}"], cwd=REPO_ROOT, env=_blocking_env(tmp_path),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["name"] for r in records] == [*KINDS, "decode_b256_paged"]
    for record in records:
        assert record["date"] and record["jax_version"] and record["device_kind"] and record["small"] is True
    for record in records[:-1]:
        assert record["status"] == "ok" and record["kind"] == KINDS[record["name"]] and record["ours"] > 0
    train, decode_b1 = records[0], records[2]
    assert train["batch"] == 4 and 0 < train["mfu"] < 1  # the largest batch tried that runs
    assert decode_b1["batch"] == 1 and decode_b1["bandwidth_fraction"] > 0
    assert "on the device" not in decode_b1["bandwidth_convention"]  # CPU: host-memory copy
    assert records[-1]["status"] == "not available"
    assert "| benchmark | figure | target |" in proc.stdout and "MFU >= 40%" in proc.stdout


def test_train_falls_back_to_a_smaller_batch(tmp_path, monkeypatch):
    """A batch that fails (e.g. out of memory) moves on to the next, smaller one."""
    from jz3_jax.bench import device_suite

    tried = []

    def fake(config, overrides, timeout_s, run_dir):
        batch = int(overrides[-1].split("=")[1])
        tried.append(batch)
        return ({"kind": "train", "ours": 1.0, "unit": "tokens/s", "batch": batch}, "") if batch <= 8 else (None, "OOM")

    monkeypatch.setattr(device_suite, "run_one", fake)
    record = device_suite.run_bench("c.py", device_suite.Bench("train", [], 60, "", [32, 16, 8, 4]), tmp_path)
    assert tried == [32, 16, 8] and record["status"] == "ok" and record["batch"] == 8
