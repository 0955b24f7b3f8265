"""Fidelity of `select.gradients=logra` against exact LESS scores (the README's "select" figures).

    JAX_PLATFORMS=cpu python tools/select_fidelity.py --out runs/select_fidelity [--candidates 300]

1. inputs: `--candidates` snippets from ../shared/data/jiuzhang_samples (a third from each file,
   `text` = input + output so every snippet has loss tokens) and `--targets` examples from each of two
   tasks (gsm8k test questions/answers, MATH test problems/solutions) of ../shared/data/eval;
2. the `select` stage on SmolLM2-135M (configs/smollm2.py; LESS LoRA r=128 on q/k/v/o), `exact`
   gradients (LESS's Adam features, `select.projection=sparse`: the dense sign projection runs at
   0.04 candidates/s here), which also runs the warm-up;
3. the same stage with `select.gradients=logra`, `precondition=factored` and `none`, on a copy of
   that warm-up (same checkpoints);
4. Spearman correlation of each logra run's scores with the exact scores, and the overlap of
   their top 10%, written to OUT/fidelity.json.

`--compare-epochs N` scores both with the first N warm-up checkpoints only (the exact scores are
recomputed from its feature stores, so its run may be stopped once epoch N's stores are full;
`--skip-exact` then reuses them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


def write_inputs(out: Path, candidates: int, targets: int) -> tuple[Path, Path]:
    files = sorted((DATA / "jiuzhang_samples").glob("*.jsonl"))
    per = -(-candidates // len(files))
    cands = []
    for f in files:
        for i, line in enumerate(f.read_text().splitlines()[:per]):
            r = json.loads(line)
            cands.append({"id": f"{f.stem}-{i}", "text": r["input"] + "\n" + r["output"]})
    cand_path, targ_path = out / "candidates.jsonl", out / "targets.jsonl"
    cand_path.write_text("".join(json.dumps(c) + "\n" for c in cands[:candidates]))
    rows = []
    for line in (DATA / "eval" / "gsm8k" / "test.jsonl").read_text().splitlines()[:targets]:
        r = json.loads(line)
        rows.append({"task": "gsm8k", "input": r["question"] + "\n", "output": r["answer"]})
    for line in (DATA / "eval" / "math_oai" / "test.jsonl").read_text().splitlines()[:targets]:
        r = json.loads(line)
        rows.append({"task": "math", "input": r["problem"] + "\n", "output": r["solution"]})
    targ_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cand_path, targ_path


def run_select(run_dir: Path, cands: Path, targs: Path, common: list[str], *extra: str) -> float:
    command = [sys.executable, "-m", "jz3_jax.launch", "select", "--config", "configs/smollm2.py", "--run-dir",
               str(run_dir), f"select.candidates={cands}", f"select.targets={targs}", *common, *extra]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    return time.perf_counter() - start


def read_scores(run_dir: Path) -> np.ndarray:
    lines = (run_dir / "select" / "scores.jsonl").read_text().splitlines()
    return np.asarray([json.loads(line)["score"] for line in lines])


def scores_from_stores(run_dir: Path, epochs: list[dict], targets: Path) -> np.ndarray:
    """The stage's scores recomputed from the feature stores of `epochs` (checkpoint-weighted cosines)."""
    from jz3_jax.influence.scoring import scores

    stage = run_dir / "select" / "features"
    sets = {}
    for kind in ("candidates", "targets"):
        sets[kind] = []
        for e in epochs:
            meta = json.loads((stage / f"epoch_{e['epoch']}" / kind / "meta.json").read_text())
            data = np.fromfile(stage / f"epoch_{e['epoch']}" / kind / "features.f32", np.float32)
            done = sum(np.fromfile(p, np.uint8) for p in (stage / f"epoch_{e['epoch']}" / kind).glob("done-p*.u8"))
            assert np.all(done > 0), f"{run_dir} epoch {e['epoch']} {kind}: features missing"
            sets[kind].append(data.reshape(meta["count"], meta["dim"]))
    tasks = [json.loads(line)["task"] for line in targets.read_text().splitlines()]
    return scores(sets["candidates"], sets["targets"], tasks, [e["mean_lr"] for e in epochs])[0]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank = lambda x: np.argsort(np.argsort(x)).astype(np.float64)
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.1) -> float:
    k = max(1, int(round(fraction * len(a))))
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/select_fidelity")
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--targets", type=int, default=10, help="targets per task")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--warmup-batch", type=int, default=8,
                        help="rows per warm-up step; fewer rows = more Adam steps, so the second moment dominates "
                             "LESS's per-example (1 - b2) g^2 term (which logra's factored preconditioner leaves out)")
    parser.add_argument("--compare-epochs", type=int, default=0,
                        help="score with the first N warm-up checkpoints only (0 = all); the exact run may then stop "
                             "after epoch N (--skip-exact reuses its stores)")
    parser.add_argument("--skip-exact", action="store_true", help="reuse OUT/exact's feature stores")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cands, targs = write_inputs(out, args.candidates, args.targets)
    common = ["select.proj_dim=8192", f"select.max_length={args.max_length}", f"select.warmup_fraction={args.warmup_fraction}",
              f"select.warmup_epochs={args.warmup_epochs}", f"select.warmup_batch_size={args.warmup_batch}", "select.warmup_lr=2e-5",
              "select.top_k=10", "select.token_budget=2048"]
    result = {"candidates": args.candidates, "targets_per_task": args.targets, "max_length": args.max_length,
              "warmup_epochs": args.warmup_epochs,
              "warmup_fraction": args.warmup_fraction, "warmup_batch": args.warmup_batch, "seconds": {}}
    exact = out / "exact"
    if not args.skip_exact:
        result["seconds"]["exact"] = run_select(exact, cands, targs, common, "select.gradients=exact",
                                                "select.projection=sparse")
    done = json.loads((exact / "select" / "warmup" / "done.json").read_text())
    epochs = done["epochs"][:args.compare_epochs or len(done["epochs"])]
    result["compared_epochs"] = [e["epoch"] for e in epochs]
    reference = scores_from_stores(exact, epochs, targs)
    for precondition in ("factored", "none"):
        run_dir = out / f"logra_{precondition}"
        if not (run_dir / "select" / "warmup").exists():
            (run_dir / "select").mkdir(parents=True, exist_ok=True)
            shutil.copytree(exact / "select" / "warmup", run_dir / "select" / "warmup")
            (run_dir / "select" / "warmup" / "done.json").write_text(json.dumps({**done, "epochs": epochs}))
        result["seconds"][f"logra_{precondition}"] = run_select(
            run_dir, cands, targs, common, "select.gradients=logra", f"select.precondition={precondition}")
        got = read_scores(run_dir)
        np.testing.assert_allclose(got, scores_from_stores(run_dir, epochs, targs), rtol=1e-6, atol=1e-9)
        result[f"logra_{precondition}"] = {"spearman": spearman(got, reference),
                                           "top10_overlap": top_overlap(got, reference)}
        (out / "fidelity.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
