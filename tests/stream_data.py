"""Synthetic inputs for the streaming `corpus` and `synthesize` stages, and a peak-RSS probe.

Used by tests/test_corpus.py, tests/test_synthesize.py and tests/test_stream_scale.py; also the
script behind the README's figures:

    python tests/stream_data.py corpus DIR MB        # DIR/web/*.jsonl, DIR/books/*.md|*.tex, DIR/qa/*.jsonl
    python tests/stream_data.py snippets FILE COUNT  # FILE: COUNT snippet records
    python tests/stream_data.py measure-corpus DIR MB          # write MB of text under DIR, run corpus
    python tests/stream_data.py measure-synthesize DIR COUNT   # COUNT snippets, synthesize to its first shard

`MEASURE_REPO=/other/checkout` measures that checkout's stages instead (e.g. the version before).

Everything is drawn from `random.Random(seed)`, so the same arguments write the same bytes. The
texts hold repeated paragraphs (exact duplicates across files and sources), headings, LaTeX
sections and Q&A records, so every cutting and dedup path is taken.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the derivative of sum integral prime number triangle angle circle radius area volume we find "
         "let x y n be so that since therefore hence proof lemma theorem value equation root square "
         "polynomial factor divides modulo sequence limit series converges function graph slope").split()


def _paragraph(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = rng.choices(WORDS, k=rng.randint(6, 18))
        words[rng.randrange(len(words))] = str(rng.randint(0, 10**6))
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def _document(rng: random.Random, common: list[str], chars: int) -> list[str]:
    """Paragraphs of about `chars` characters; one in eight is a shared (duplicated) paragraph."""
    paragraphs, size = [], 0
    while size < chars:
        p = rng.choice(common) if rng.random() < 0.125 else _paragraph(rng, rng.randint(1, 8))
        paragraphs.append(p)
        size += len(p) + 2
    return paragraphs


def write_corpus(root: Path, megabytes: float, seed: int = 0) -> list[str]:
    """Write about `megabytes` MB of math-like text under `root`; returns `corpus.sources` entries
    (`web` weight 2, `books` weight 1, `qa` weight 0.5)."""
    rng = random.Random(seed)
    common = [_paragraph(rng, 3) for _ in range(200)]
    for name in ("web", "books", "qa"):
        (root / name).mkdir(parents=True, exist_ok=True)
    budget, written, index = int(megabytes * 2**20), 0, 0
    web = books = qa = None
    recent: list[str] = []
    try:
        while written < budget:
            if index % 400 == 0:  # a new jsonl shard of each record source every 400 documents
                for handle in (web, qa):
                    if handle:
                        handle.close()
                web = open(root / "web" / f"part-{index // 400:05d}.jsonl", "w", encoding="utf-8")
                qa = open(root / "qa" / f"part-{index // 400:05d}.jsonl", "w", encoding="utf-8")
            kind = index % 10
            if kind < 6:
                roll = rng.random()
                if roll < 0.03 and recent:  # a whole document again (a mirror of a page)
                    text = rng.choice(recent)
                elif roll < 0.05:  # under corpus.min_chars
                    text = f"Lemma {rng.randint(0, 99)}."
                else:
                    text = "\n\n".join(_document(rng, common, rng.randint(200, 6000)))
                    recent[index % 64:index % 64 + 1] = [text]
                line = json.dumps({"text": text}) + "\n"
                web.write(line)
                written += len(line)
            elif kind < 8:
                record = {"question": _paragraph(rng, 2), "answer": "\n\n".join(_document(rng, common, 600))}
                line = json.dumps(record) + "\n"
                qa.write(line)
                written += len(line)
            else:
                body = "\n\n".join(f"{'##' if i % 2 else '#'} Section {i}\n\n" +
                                   "\n\n".join(_document(rng, common, rng.randint(300, 3000))) for i in range(4))
                if kind == 8:
                    books = root / "books" / f"b{index:07d}.md"
                    books.write_text(body, encoding="utf-8")
                else:
                    books = root / "books" / f"b{index:07d}.tex"
                    books.write_text("\\documentclass{article}\n\\begin{document}\n" +
                                     body.replace("## ", "\\subsection{").replace("# ", "\\section{") +
                                     "\n\\end{document}\n", encoding="utf-8")
                written += len(body)
            index += 1
    finally:
        for handle in (web, qa):
            if handle:
                handle.close()
    return [f"{root / 'web'}=2", f"{root / 'books'}=1", f"{root / 'qa'}=0.5"]


def write_snippets(path: Path, count: int, seed: int = 0, sources: tuple[str, ...] = ("web", "books")) -> Path:
    """`count` snippet records (`id`, `source`, `text` of 100-900 characters); every 50th repeats an
    earlier id (as a selection that picked a snippet twice)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            sid = f"s{rng.randrange(i)}" if i and i % 50 == 0 else f"s{i}"
            text = _paragraph(rng, rng.randint(1, 8))[:900]
            f.write(json.dumps({"id": sid, "source": sources[i % len(sources)], "text": text}) + "\n")
    return path


def peak_rss_mb(command: list[str], *, cwd: str | os.PathLike, env: dict, stop_when: Path | None = None,
                timeout: float = 1800) -> tuple[float, int, str]:
    """Run `command`; (its peak RSS in MB (the kernel's `ru_maxrss`), its exit status, its stderr's tail).

    With `stop_when` (a directory), the process is killed as soon as a `part-*.jsonl` file appears
    in it (e.g. the first completion shard of `synthesize`): the peak is then the peak up to there.
    """
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            stop = stop_when is not None and stop_when.is_dir() and any(stop_when.glob("part-*.jsonl"))
            if stop or time.time() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = log.read().decode("utf-8", "replace")[-3000:]
    return usage.ru_maxrss / 1024, proc.returncode, tail


REPO_ROOT = Path(__file__).resolve().parent.parent
# synthesize with the tiny random model: prompts up to ~3,000 bytes (byte tokenizer), one new token
SYNTH_KEYS = ["synthesize.kinds=cot", "synthesize.shard_size=1", "sampling.max_new_tokens=1", "engine.max_batch=2",
              "engine.max_seq_len=4096", "engine.prompt_bucket=1024", "synthesize.chat_template=false"]
# the checkout whose stages are measured (MEASURE_REPO=/path/to/another/checkout compares another version)
MEASURED = Path(os.environ.get("MEASURE_REPO", REPO_ROOT))


def launch_env() -> dict:
    """The environment of a measured stage: CPU JAX, the measured checkout's package first."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(MEASURED), *filter(None, [env.get("PYTHONPATH")])])
    return env


def measure_corpus(sources: list[str], run_dir: Path, *extra: str) -> dict:
    """Run `corpus` on `sources`; its peak RSS (MB), wall time and snippet count."""
    command = [sys.executable, "-m", "jz3_jax.launch", "corpus", "--config", "configs/tiny.py", "--run-dir",
               str(run_dir), "corpus.sources=" + ",".join(sources), *extra]
    start = time.time()
    peak, code, tail = peak_rss_mb(command, cwd=MEASURED, env=launch_env())
    if code != 0:
        raise RuntimeError(f"corpus exited {code}: {tail}")
    report = json.loads((run_dir / "corpus" / "report.json").read_text())
    return {"peak_rss_mb": round(peak, 1), "seconds": round(time.time() - start, 1), "snippets": report["snippets"]}


def measure_synthesize(snippets: Path, run_dir: Path, *extra: str) -> dict:
    """Run `synthesize` on `snippets` with the tiny random model until its first completion shard is
    written; the peak RSS (MB) up to there, the wall time, and its log's prompt counts."""
    command = [sys.executable, "-m", "jz3_jax.launch", "synthesize", "--config", "configs/tiny.py", "--run-dir",
               str(run_dir), f"synthesize.snippets={snippets}", *SYNTH_KEYS, *extra]
    start = time.time()
    peak, code, tail = peak_rss_mb(command, cwd=MEASURED, env=launch_env(),
                                   stop_when=run_dir / "synthesize" / "completions")
    shards = list((run_dir / "synthesize" / "completions").glob("part-*.jsonl"))
    if not shards:
        raise RuntimeError(f"synthesize wrote no shard (exit {code}): {tail}")
    counts = [line for line in tail.splitlines() if "already done" in line]
    return {"peak_rss_mb": round(peak, 1), "seconds": round(time.time() - start, 1),
            "log": counts[-1].split("INFO ")[-1] if counts else ""}


PREP = """
import json, resource, sys, time
from jz3_jax.config import apply_overrides, load_config
from jz3_jax.synth import prompts
cfg = apply_overrides(load_config("configs/tiny.py"), ["synthesize.kinds=cot"])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.time()
if hasattr(prompts, "PromptSource"):
    share = prompts.PromptSource.from_snippets(sys.argv[1], cfg.synthesize, cfg.seed).share(prompts.NO_IDS, 0, 1)
    first, count = next(iter(share)), len(share)
else:  # the version that rendered every prompt first
    share = prompts.prompts_from_snippets(sys.argv[1], cfg.synthesize, cfg.seed)
    first, count = share[0], len(share)
print(json.dumps({"imports_rss_mb": round(base, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                  / 1024, 1), "seconds": round(time.time() - start, 1), "prompts": count}))
"""


def measure_synthesize_prep(snippets: Path) -> dict:
    """The preparation of `synthesize` alone (no engine): find process 0 of 1's share of the prompts of
    `snippets` and render the first; the peak RSS (MB) after importing and after that, and the time."""
    result = subprocess.run([sys.executable, "-c", PREP, str(snippets)], cwd=MEASURED, env=launch_env(),
                            capture_output=True, text=True, timeout=1800)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    what, target, size = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if what == "corpus":
        print(",".join(write_corpus(target, float(size))))
    elif what == "snippets":
        write_snippets(target, int(size))
    elif what == "measure-corpus":  # DIR MB [key=value ...]: write the texts under DIR, run, measure
        entries = write_corpus(target / "texts", float(size))
        print(json.dumps({"megabytes": float(size), **measure_corpus(entries, target / "run", *sys.argv[4:])}))
    elif what == "measure-synthesize":  # DIR COUNT [key=value ...]
        target.mkdir(parents=True, exist_ok=True)
        path = write_snippets(target / "snippets.jsonl", int(size))
        print(json.dumps({"snippets": int(size), "file_mb": round(path.stat().st_size / 2**20, 1),
                          **measure_synthesize(path, target / "run", *sys.argv[4:])}))
