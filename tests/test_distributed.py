"""Two processes x 4 forced CPU devices on 127.0.0.1: one global 8-device mesh, one sharded jit.

Each process runs `maybe_initialize`, `setup_logging`, `build_mesh(data=2, fsdp=4, tensor=1)`,
builds global arrays with `jax.make_array_from_callback` (sharded by the default rules) and runs a
jitted matmul + reductions across the sharded axes; process 0 prints the result, which must match
numpy in this process.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from helpers import REPO_ROOT, subprocess_env

TIMEOUT_S = 120
BATCH, EMBED, MLP = 16, 32, 24

WORKER = r"""
import json
import sys

import numpy as np

process_id, port, log_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

from jz3_jax.config.schema import DEFAULT_RULES, DistributedConfig, MeshConfig
from jz3_jax.runtime.distributed import maybe_initialize

assert maybe_initialize(DistributedConfig(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                          process_id=process_id))

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jz3_jax.runtime.logs import setup_logging
from jz3_jax.runtime.mesh import build_mesh
from jz3_jax.runtime.sharding import named_sharding, parse_rules

logger = setup_logging(log_dir, jax.process_index())
logger.info("hello from process %d of %d", jax.process_index(), jax.process_count())

mesh = build_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
rules = parse_rules(DEFAULT_RULES)
rng = np.random.default_rng(1234)  # the same global arrays in both processes
x_np = rng.normal(size=(BATCH, EMBED)).astype(np.float32)
w_np = (rng.normal(size=(EMBED, MLP)) / np.sqrt(EMBED)).astype(np.float32)

x_sharding = named_sharding(("batch", "embed"), rules, mesh, x_np.shape)
w_sharding = named_sharding(("embed", "mlp"), rules, mesh, w_np.shape)
x = jax.make_array_from_callback(x_np.shape, x_sharding, lambda index: x_np[index])
w = jax.make_array_from_callback(w_np.shape, w_sharding, lambda index: w_np[index])
replicated = NamedSharding(mesh, PartitionSpec())


@jax.jit
def compute(x, w):
    y = jnp.tanh(x @ w)                      # contracts over embed (sharded over fsdp)
    return {"colsum": y.sum(axis=0),         # reduces over batch (sharded over data+fsdp)
            "total": y.sum(), "sq": (x * x).sum()}


with jax.set_mesh(mesh):
    out = jax.jit(compute, out_shardings=replicated)(x, w)
out = {k: np.asarray(v.addressable_data(0)) for k, v in out.items()}
info = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "device_count": jax.device_count(),
    "local_device_count": jax.local_device_count(),
    "mesh": dict(mesh.shape),
    "mesh_processes": sorted({d.process_index for d in mesh.devices.flat}),
    "x_spec": [list(e) if isinstance(e, tuple) else e for e in x.sharding.spec],
    "w_spec": [list(e) if isinstance(e, tuple) else e for e in w.sharding.spec],
    "x_local_shards": len(x.addressable_shards),
    "x_fully_addressable": x.is_fully_addressable,
    "colsum": out["colsum"].tolist(), "total": float(out["total"]), "sq": float(out["sq"]),
}
logger.info("result total %.6f", info["total"])
if jax.process_index() == 0:
    print(json.dumps(info), flush=True)
"""


def _free_port() -> int:
    try:
        import portpicker

        return portpicker.pick_unused_port()
    except ImportError:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Run the worker as processes 0 and 1; return [(returncode, stdout, stderr)] and the log dir."""
    log_dir = tmp_path_factory.mktemp("distributed") / "logs"
    port = _free_port()
    code = f"BATCH, EMBED, MLP = {BATCH}, {EMBED}, {MLP}\n" + textwrap.dedent(WORKER)
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i), str(port), str(log_dir)], cwd=REPO_ROOT,
                         env=subprocess_env(devices=4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    deadline = time.monotonic() + TIMEOUT_S
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append((proc.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        details = []
        for i, proc in enumerate(procs):
            stdout, stderr = proc.communicate()
            details.append(f"--- process {i} stdout ---\n{stdout}\n--- process {i} stderr ---\n{stderr}")
        pytest.fail(f"two-process run did not finish in {TIMEOUT_S} s\n" + "\n".join(details))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, (code_, stdout, stderr) in enumerate(outputs):
        assert code_ == 0, f"process {i} exited {code_}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    return outputs, log_dir


def _reference() -> dict:
    rng = np.random.default_rng(1234)
    x = rng.normal(size=(BATCH, EMBED)).astype(np.float32)
    w = (rng.normal(size=(EMBED, MLP)) / np.sqrt(EMBED)).astype(np.float32)
    y = np.tanh(x.astype(np.float64) @ w.astype(np.float64))
    return {"colsum": y.sum(axis=0), "total": y.sum(), "sq": (x.astype(np.float64) ** 2).sum()}


# gloo's C++ side prints a connection notice per rank to stdout, piece by piece from its own
# threads, so notices interleave at any piece ("[Gloo] Rank 1[Gloo] Rank 0 is connected ...").
# Our own stdout is one JSON line written in one call: it stays whole wherever it falls.
GLOO_PIECES = ("[Gloo] Rank ", " is connected to ", " peer ranks. ", "Expected number of connected peer ranks is : ")
RESULT_LINE = re.compile(r'\{"process_index".*\}')


def _without_gloo(text: str) -> str:
    """`text` without gloo's notices: whatever is left besides their rank counts and newlines."""
    for piece in GLOO_PIECES:
        text = text.replace(piece, "")
    return re.sub(r"[\d\s]+", " ", text).strip()


def _result(two_processes) -> dict:
    outputs, _ = two_processes
    stdout = outputs[0][1]
    found = RESULT_LINE.findall(stdout)
    assert len(found) == 1, stdout
    assert _without_gloo(RESULT_LINE.sub("", stdout)) == "", stdout  # nothing else of ours
    return json.loads(found[0])


def test_global_mesh_spans_both_processes(two_processes):
    info = _result(two_processes)
    assert info["process_index"] == 0
    assert info["process_count"] == 2
    assert info["device_count"] == 8 and info["local_device_count"] == 4
    assert info["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert info["mesh_processes"] == [0, 1]
    assert info["x_spec"] == [["data", "fsdp"], None]  # batch=data+fsdp; embed's fsdp already used
    assert info["w_spec"] == ["fsdp", None]            # embed=fsdp; mlp=tensor has size 1
    assert info["x_local_shards"] == 4 and info["x_fully_addressable"] is False


def test_sharded_result_matches_single_process(two_processes):
    info, ref = _result(two_processes), _reference()
    assert abs(ref["total"]) > 0.1  # not trivially zero
    np.testing.assert_allclose(info["colsum"], ref["colsum"], rtol=1e-5, atol=1e-5)
    assert abs(info["total"] - ref["total"]) <= 1e-5 * max(1.0, abs(ref["total"]))
    assert abs(info["sq"] - ref["sq"]) <= 1e-5 * max(1.0, abs(ref["sq"]))


def test_only_process_0_prints_but_both_log_to_files(two_processes):
    outputs, log_dir = two_processes
    (_, out0, err0), (_, out1, err1) = outputs
    assert "[p0] INFO hello from process 0 of 2" in err0
    assert "[p1]" not in err0
    assert _without_gloo(out1) == "", out1
    assert "hello from process" not in err1 and "[p1]" not in err1 and "result total" not in err1
    logs = {p.name: p.read_text() for p in log_dir.iterdir()}
    assert sorted(logs) == ["process_0.log", "process_1.log"]
    assert "[p0] INFO hello from process 0 of 2" in logs["process_0.log"]
    assert "[p1] INFO hello from process 1 of 2" in logs["process_1.log"]
    assert "[p1]" not in logs["process_0.log"] and "[p0]" not in logs["process_1.log"]
    # both processes computed the same replicated result
    total0 = float(logs["process_0.log"].split("result total ")[1].split()[0])
    total1 = float(logs["process_1.log"].split("result total ")[1].split()[0])
    assert total0 == total1
