"""The KD dataset downstream: `sft` trains on kd.jsonl (loss on the output only), the boost round
merges both rounds without duplicates, and `synthesize` renders snippets with the same library."""

from __future__ import annotations

import json
import os

import pytest

from helpers import REPO_ROOT, run_launch
from jz3_jax.config import apply_overrides, load_config
from jz3_jax.data.examples import encode_example
from jz3_jax.synth.prompts import prompts_from_snippets
from jz3_jax.tokenizer import load_tokenizer
from test_distill import KEY, KEY_ENV, FakeTeacher, read_jsonl, run_distill, write_snippets


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory):
    """A finished distill run on 6 snippets, one random level of three each."""
    os.environ[KEY_ENV] = KEY
    server = FakeTeacher()
    run_dir = tmp_path_factory.mktemp("kd")
    snippets = write_snippets(run_dir / "snippets.jsonl", [""] * 6)
    report = run_distill(run_dir, snippets, server.url, "distill.levels=grade_school,college,aime",
                         "distill.level_policy=random")
    yield run_dir, snippets, server, report
    server.close()


def test_sft_trains_on_kd_jsonl_with_the_loss_on_the_output_only(kd_run, tmp_path):
    run_dir, _, _, report = kd_run
    kd = run_dir / "distill" / "kd.jsonl"
    assert report["records"] == 6
    tokenizer = load_tokenizer("bytes")
    for record in read_jsonl(kd):
        example = encode_example(record, tokenizer, max_length=100_000)
        prompt_len = len(tokenizer.encode(record["input"])) + (1 if tokenizer.adds_bos else 0)
        assert example.loss_mask[:prompt_len - 1].sum() == 0  # no loss on the prompt
        assert example.loss_mask.sum() == len(tokenizer.encode(record["output"])) + 1  # output + eos
    result = run_launch("sft", "--config", "configs/tiny.py", "--run-dir", tmp_path, f"data.train_path={kd}",
                        "train.steps=2", "train.global_batch_size=2", "data.max_length=2048", "train.log_every=1",
                        "model.max_position_embeddings=2048",
                        "train.export_hf=false", "data.eval_rows=0", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_jsonl(tmp_path / "sft" / "metrics.jsonl")
    steps = [m for m in metrics if "loss" in m]
    (per_record,) = {len(tokenizer.encode(r["output"])) + 1 for r in read_jsonl(kd)}  # all answers equal
    assert len(steps) == 2
    for m in steps:  # two records per step; only their output tokens (and eos) carry the loss
        assert m["loss"] > 0 and m["target_tokens"] == 2 * per_record < m["tokens"] / 5


def test_boost_round_merges_both_rounds_without_duplicates(kd_run, tmp_path):
    run_dir, _, server, _ = kd_run
    first = read_jsonl(run_dir / "distill" / "kd.jsonl")
    # the boost round: other snippets plus two of the first round's, sharing the first round's cache
    snippets = write_snippets(tmp_path / "selected.jsonl", [""] * 8)
    lines = (tmp_path / "selected.jsonl").read_text().splitlines()
    boost = [json.loads(line) for line in lines]
    for i, row in enumerate(boost):
        if i >= 2:
            row["id"], row["text"] = f"b{i}", row["text"].replace("Snippet", "Boost snippet")
    snippets.write_text("".join(json.dumps(r) + "\n" for r in boost))
    report = run_distill(tmp_path, snippets, server.url, "distill.levels=grade_school,college,aime",
                         "distill.level_policy=random", f"distill.cache_dir={run_dir / 'distill' / 'cache'}",
                         f"distill.include={run_dir / 'distill' / 'kd.jsonl'}")
    merged = read_jsonl(tmp_path / "distill" / "kd.jsonl")
    assert report["cache_hits"] == 2 and report["calls"] == 6 and report["records"] == 8
    assert report["included"] == 4 and len(merged) == 12 == len(first) + 6
    assert len({r["request_hash"] for r in merged}) == 12


def test_synthesize_renders_snippets_with_the_distill_prompts(kd_run, tmp_path):
    run_dir, snippets, _, _ = kd_run
    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")), [
        "synthesize.levels=grade_school,college,aime", "synthesize.level_policy=random", "synthesize.kinds=cot,tool"])
    records = prompts_from_snippets(snippets, cfg.synthesize, cfg.seed)
    kd = {r["id"]: r["input"] for r in read_jsonl(run_dir / "distill" / "kd.jsonl")}
    assert len(records) == 12 and {r.kind for r in records} == {"cot", "tool"}
    for record in records:
        assert record.meta["level"] in ("grade_school", "college", "aime") and record.meta["kind"] == record.kind
        if record.kind == "cot":
            assert kd[record.id] == record.prompt  # exactly the prompt the teacher answered

    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"id": "s0", "source": "test", "text": "Pens cost 3 dollars."}) + "\n")
    result = run_launch("synthesize", "--config", "configs/tiny.py", "--run-dir", tmp_path,
                        f"synthesize.snippets={one}",
                        "synthesize.levels=amc8", "synthesize.level_policy=fixed", "synthesize.kinds=cot,tool",
                        "synthesize.chat_template=false", "sampling.max_new_tokens=4", "engine.max_batch=2",
                        "engine.max_seq_len=2560", "engine.prompt_bucket=256", "model.max_position_embeddings=2560",
                        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = [json.loads(line) for f in sorted((tmp_path / "synthesize" / "completions").glob("*.jsonl"))
           for line in f.read_text().splitlines()]
    assert sorted((r["id"], r["kind"], r["level"]) for r in out) == [("s0:amc8:cot", "cot", "amc8"),
                                                                      ("s0:amc8:tool", "tool", "amc8")]
    assert all(r["meta"]["snippet_id"] == "s0" and "Pens cost 3 dollars." in r["prompt"] for r in out)
