"""`make bench-device`: the accelerator figures, one benchmark per process, appended as JSON lines.

    python -m jz3_jax.bench.device_suite --out runs/bench-device/results.jsonl [--small]

Each benchmark runs `python -m jz3_jax.launch bench ...` in its own subprocess with its own
timeout (one hang cannot eat the whole budget); the suite appends each result's JSON line, with
the jax version, device kind and UTC date, to `--out` and prints a table beside the targets.
The train step tries batches from the largest down and keeps the first that runs (an
out-of-memory failure moves on to the next). `--small` runs the same code paths on
configs/tiny.py with tiny shapes (a CPU check that the script still works). Installs nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path


@dataclasses.dataclass
class Bench:
    """One row of the suite: a name, its `bench` overrides, its target, and its timeout."""

    name: str
    overrides: list[str]
    timeout_s: float
    target: str = ""
    batches: list[int] = dataclasses.field(default_factory=list)  # train: tried largest first


def suite(small: bool) -> tuple[str, list[Bench]]:
    """(config path, benchmarks) of the full suite or of the small CPU check."""
    if small:
        common = ["bench.warmup=1", "bench.repeats=1", "bench.reference=false"]
        dec = ["bench.kind=decode", "bench.prompt_len=4", "bench.new_tokens=4"]
        return "configs/tiny.py", [
            Bench("train", common + ["bench.kind=train", "bench.seq_len=16", "model.attention=auto",
                                     "train.loss_chunk=8", "train.peak_tflops=1"], 60, "MFU >= 40%", [4, 2]),
            Bench("forward_b1", common + ["bench.kind=forward", "bench.batch=1", "bench.seq_len=16"], 60),
            Bench("decode_b1", common + dec + ["bench.batch=1"], 60, ">= 60% of HBM bound"),
            Bench("decode_b64", common + dec + ["bench.batch=4"], 60),
            Bench("decode_b256", common + dec + ["bench.batch=8"], 60, "paged >= 2x contiguous"),
            Bench("select_exact", common + ["bench.kind=influence", "bench.batch=2", "bench.seq_len=16",
                                            "lora.rank=4", "select.proj_dim=256"], 90),
        ]
    common = ["bench.warmup=2", "bench.repeats=5", "bench.reference=false"]
    dec = ["bench.kind=decode", "bench.prompt_len=128", "bench.new_tokens=128", "bench.repeats=3"]
    return "configs/bench_llama_1b.py", [
        Bench("train", common + ["bench.kind=train", "bench.seq_len=2048", "model.attention=auto",
                                 "train.loss_chunk=512"], 140, "MFU >= 40% (H100)", [16, 8, 4]),
        Bench("forward_b1", common + ["bench.kind=forward", "bench.batch=1", "bench.seq_len=2048"], 50),
        Bench("decode_b1", common + dec + ["bench.batch=1"], 50, ">= 60% of HBM bound"),
        Bench("decode_b64", common + dec + ["bench.batch=64"], 50),
        Bench("decode_b256", common + dec + ["bench.batch=256"], 60, "paged >= 2x contiguous"),
        Bench("select_exact", common + ["bench.kind=influence", "bench.batch=8", "bench.seq_len=512",
                                        "lora.rank=0"], 80),  # lora.rank=0: LESS's r=128 on q/k/v/o
    ]


def _last_json(stdout: str) -> dict | None:
    """The JSON object on the last line of `stdout` that parses as one, else None."""
    for line in reversed(stdout.splitlines()):
        if line.strip().startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run_one(config: str, overrides: list[str], timeout_s: float, run_dir: Path) -> tuple[dict | None, str]:
    """Run one `bench` launch; (its JSON result or None, a short error text)."""
    cmd = [sys.executable, "-m", "jz3_jax.launch", "bench", "--config", config, "--run-dir", str(run_dir),
           *overrides]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:.0f} s"
    result = _last_json(proc.stdout) if proc.returncode == 0 else None
    if result is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"exit {proc.returncode}: {tail[:200]}"
    return result, ""


def run_bench(config: str, bench: Bench, run_dir: Path) -> dict:
    """Run `bench` (for train: the largest batch that runs) and return its result record."""
    start = time.perf_counter()
    batches = bench.batches or [None]
    result, error = None, ""
    for batch in batches:
        extra = [] if batch is None else [f"bench.batch={batch}"]
        remaining = bench.timeout_s - (time.perf_counter() - start)
        if remaining <= 5:
            break
        result, error = run_one(config, bench.overrides + extra, remaining, run_dir / bench.name)
        if result is not None:
            break
    record = {"name": bench.name, "status": "ok" if result else "failed", "target": bench.target,
              "wall_s": round(time.perf_counter() - start, 1)}
    if result is None:
        record["error"] = error
    return {**record, **(result or {})}


def environment() -> dict:
    """jax version, device kind and UTC date, stamped on every record (read in a child process, so
    this process never initialises the accelerator the benchmarks need)."""
    code = ("import jax, json; print(json.dumps({'jax_version': jax.__version__, "
            "'device_kind': jax.devices()[0].device_kind}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    env = _last_json(proc.stdout) or {"jax_version": None, "device_kind": None}
    return {**env, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def not_available(name: str, why: str, target: str = "") -> dict:
    """A record for a figure the code cannot measure yet."""
    return {"name": name, "status": "not available", "target": target, "error": why}


def figure(record: dict) -> str:
    """The table's figure for one record."""
    if record["status"] != "ok":
        return record["status"] + (f" ({record.get('error', '')})" if record.get("error") else "")
    text = f"{record['ours']:,.1f} {record['unit']}"
    if record.get("mfu") is not None:
        text += f", MFU {100 * record['mfu']:.1f}% at batch {record.get('batch')}"
    if record.get("bandwidth_fraction") is not None and record.get("batch") == 1:
        text += (f", {100 * record['bandwidth_fraction']:.1f}% of the bound "
                 f"({record.get('memory_bandwidth_gbs')} GB/s copy)")
    return text


def table(records: list[dict]) -> str:
    """A Markdown table: benchmark, figure, target."""
    lines = ["| benchmark | figure | target |", "|---|---|---|"]
    lines += [f"| {r['name']} | {figure(r)} | {r.get('target', '')} |" for r in records]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the suite, append each record to `--out`, print the table; exit 1 if any benchmark failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-device/results.jsonl")
    parser.add_argument("--small", action="store_true", default=os.environ.get("BENCH_DEVICE_SMALL") == "1")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config, benches = suite(args.small)
    stamp = {**environment(), "small": args.small, "config": config}
    records = []
    for bench in benches:
        record = {**run_bench(config, bench, out.parent / "runs"), **stamp}
        records.append(record)
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{bench.name}: {figure(record)}", flush=True)
    paged = {**not_available("decode_b256_paged", "no paged engine yet", "paged >= 2x contiguous"), **stamp}
    records.append(paged)
    with out.open("a") as f:
        f.write(json.dumps(paged) + "\n")
    print(table(records), flush=True)
    return 0 if all(r["status"] != "failed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
