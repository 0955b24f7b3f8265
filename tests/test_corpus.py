"""The `corpus` stage: mixed folders in, bounded snippets with stable ids out; cutting rules; bad input named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from etils import epath

from helpers import REPO_ROOT, run_launch
from stream_data import write_corpus
from jz3_jax.config import apply_overrides, build_spec, load_config
from jz3_jax.corpus.spec import CorpusSpec
from jz3_jax.corpus import stage
from jz3_jax.corpus.cutting import cut
from jz3_jax.corpus.sources import BadRecords, CorpusError, Fields, parse_spec, read_documents
from jz3_jax.prompts.snippets import content_id
from jz3_jax.stages.registry import StageContext

SAMPLES = REPO_ROOT.parent / "shared" / "data" / "jiuzhang_samples"
LOGGER = logging.getLogger("jz3_jax.test_corpus")
PARAGRAPH = ("The derivative of a polynomial is found term by term. For x^n it is n x^(n-1). "
             "Sums and constant multiples are handled by linearity. ")


def _corpus_dir(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir()
    (root / "web.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"text": "\n\n".join([PARAGRAPH * 2] * 6)},
        {"question": "What is 2 + 3?", "answer": "2 + 3 = 5, so the answer is 5."},
        {"text": "Duplicate line that appears twice in the corpus, word for word."},
        {"content": "Duplicate line that appears twice in the corpus, word for word."},
    ]) + "\n")
    pq.write_table(pa.table({"problem": ["Find x if 2x = 10."] * 3 + ["Solve x^2 = 4."],
                             "solution": ["Divide by two: x = 5. The answer is 5."] * 3 + ["x = 2 or x = -2."]}),
                   root / "qa.parquet")
    sub = root / "books"
    sub.mkdir()
    (sub / "notes.md").write_text("# Limits\n\n" + PARAGRAPH * 4 + "\n\n## Continuity\n\n" + PARAGRAPH * 3 +
                                  "\n\n## Derivatives\n\n" + (PARAGRAPH * 3 + "\n\n") * 5)
    (sub / "paper.tex").write_text("\\documentclass{article}\n\\begin{document}\n\\section{Groups}\n" +
                                   PARAGRAPH * 6 + "\n\\section{Rings}\n" + PARAGRAPH * 5 +
                                   "\n\\end{document}\n")
    (sub / "plain.txt").write_text(PARAGRAPH * 30)
    (sub / "ignored.csv").write_text("a,b\n1,2\n")
    return root


def run_corpus(run_dir: Path, *extra: str) -> dict:
    cfg = apply_overrides(load_config(str(REPO_ROOT / "configs" / "tiny.py")), [f"run_dir={run_dir}", *extra])
    return stage.run(build_spec(CorpusSpec, cfg), StageContext("corpus", epath.Path(run_dir) / "corpus", LOGGER))


def snippets(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "corpus" / "snippets.jsonl").read_text().splitlines()]


def test_mixed_folder_gives_bounded_snippets_with_stable_ids(tmp_path):
    corpus = _corpus_dir(tmp_path / "texts")
    report = run_corpus(tmp_path / "a", f"corpus.sources={corpus}", "corpus.max_chars=500")
    first = snippets(tmp_path / "a")
    assert report["snippets"] == len(first) > 10
    assert all(0 < len(s["text"]) <= 500 for s in first) and {s["source"] for s in first} == {"texts"}
    assert len({s["id"] for s in first}) == len(first) == len({s["text"] for s in first})
    texts = [s["text"] for s in first]
    assert any(t.startswith("## Continuity") for t in texts)  # markdown cut at a heading
    assert any(t.startswith("\\section{Rings}") for t in texts) and not any("documentclass" in t for t in texts)
    assert "What is 2 + 3?\n\n2 + 3 = 5, so the answer is 5." in texts  # Q&A joined
    assert "Find x if 2x = 10.\n\nDivide by two: x = 5. The answer is 5." in texts
    assert texts.count("Duplicate line that appears twice in the corpus, word for word.") == 1  # exact dedup
    assert report["sources"]["texts"]["duplicates"] >= 3  # that line, two parquet rows, repeated text
    again = run_corpus(tmp_path / "b", f"corpus.sources={corpus}", "corpus.max_chars=500")
    assert snippets(tmp_path / "b") == first and again == report  # same ids, same order


def test_weights_and_max_snippets_sample_by_source(tmp_path):
    for name in ("heavy", "light"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "t.jsonl").write_text("".join(json.dumps({"text": f"{name} snippet number {i} about sums."}) + "\n"
                                                for i in range(300)))
    report = run_corpus(tmp_path, f"corpus.sources={tmp_path / 'heavy'}=4,{tmp_path / 'light'}=1",
                        "corpus.max_snippets=100")
    kept = {name: report["sources"][name]["kept"] for name in ("heavy", "light")}
    assert sum(kept.values()) == 100 and kept["heavy"] > 2.5 * kept["light"] > 0
    dropped = run_corpus(tmp_path / "z", f"corpus.sources={tmp_path / 'heavy'},{tmp_path / 'light'}=0")
    assert dropped["snippets"] == 300 and {s["source"] for s in snippets(tmp_path / "z")} == {"heavy"}


def _held_in_memory(entries: list[str], seed: int, max_snippets: int) -> list[dict]:
    """The reference: the stage as it was when it held every text, a `seen` set and one global sort."""
    seen, candidates = set(), []
    fields = Fields(["text", "content"], ["question", "problem", "input"], ["answer", "solution", "output"])
    for source in map(parse_spec, entries):
        for document in read_documents(source, fields, BadRecords()):
            for text in cut(document.text, 1000, document.kind):
                sid = content_id(text)
                if len(text) < 20 or sid in seen:
                    continue
                seen.add(sid)
                if source.weight > 0:
                    candidates.append((stage.sample_key(seed, sid, source.weight),
                                       {"id": sid, "source": source.tag, "text": text}))
    candidates.sort(key=lambda item: (-item[0], item[1]["id"]))
    return [record for _, record in candidates[:max_snippets or None]]


@pytest.mark.parametrize("max_snippets", [0, 300])
def test_streamed_sample_equals_the_in_memory_one(tmp_path, max_snippets):
    """Same snippets in the same order as sorting every text in memory; a weight-0 source still
    takes part in dedup (its snippets are never written, and block the same text later)."""
    entries = write_corpus(tmp_path / "texts", 0.4, seed=1)  # web=2, books=1, qa=0.5
    web = (tmp_path / "texts" / "web" / "part-00000.jsonl").read_text().splitlines(keepends=True)
    for name, lines in (("mirror", web[:3]), ("copy", web[3:9])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "m.jsonl").write_text("".join(lines))
    entries = [f"{tmp_path / 'mirror'}=0", *entries, f"{tmp_path / 'copy'}=1"]
    report = run_corpus(tmp_path / "run", "corpus.sources=" + ",".join(entries), f"corpus.max_snippets={max_snippets}",
                        "seed=5")
    written = snippets(tmp_path / "run")
    assert written == _held_in_memory(entries, 5, max_snippets)
    sources = report["sources"]
    assert sources["mirror"]["snippets"] > 0 and sources["mirror"]["kept"] == 0
    assert sources["web"]["duplicates"] >= sources["mirror"]["snippets"]  # blocked by the weight-0 source
    assert sources["copy"]["snippets"] == 0 and sources["copy"]["duplicates"] > 0
    assert sum(s["kept"] for s in sources.values()) == len(written) == (max_snippets or len(written))
    if max_snippets:
        assert {s["source"] for s in written} == {"web", "books", "qa"}


def test_a_malformed_file_is_named_with_its_line_or_skipped(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "A fine first record about algebra."}\n\n{"text": "broken\n{"title": "no text"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:3: not valid JSON"):
        run_corpus(tmp_path, f"corpus.sources={bad}")
    report = run_corpus(tmp_path, f"corpus.sources={bad}", "corpus.bad_records=skip")
    assert report["skipped_records"] == 2 and report["snippets"] == 1
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CorpusError, match="broken.parquet: not a readable Parquet file"):
        run_corpus(tmp_path, f"corpus.sources={tmp_path / 'broken.parquet'}")
    result = run_launch("corpus", "--config", "configs/tiny.py", "--run-dir", tmp_path / "r", f"corpus.sources={bad}")
    assert result.returncode == 2 and "bad.jsonl:3" in result.stderr
    with pytest.raises(CorpusError, match="does not exist"):
        run_corpus(tmp_path, f"corpus.sources={tmp_path / 'nowhere'}")
    with pytest.raises(CorpusError, match="corpus.sources is empty"):
        run_corpus(tmp_path)


@pytest.mark.parametrize("kind", ["plain", "markdown", "latex", "qa"])
def test_cut_respects_the_bound_and_loses_no_words(kind):
    text = "# Head\n\n" + "\n\n".join(PARAGRAPH * k for k in range(1, 9)) + " " + "x" * 250 + " end."
    pieces = cut(text, 120, kind)
    assert all(0 < len(p) <= 120 for p in pieces)
    assert "".join("".join(pieces).split()) == "".join(text.split())  # only whitespace at cuts changes
    assert cut("short text", 120, kind) == ["short text"]


def test_cut_prefers_paragraphs_then_sentences():
    paragraphs = ["First paragraph, one sentence.", "Second paragraph. It has two sentences."]
    assert cut("\n\n".join(paragraphs), 35, "plain") == ["First paragraph, one sentence.",
                                                         "Second paragraph.", "It has two sentences."]
    assert cut("\n\n".join(paragraphs), 80, "plain") == ["\n\n".join(paragraphs)]


def test_source_specs():
    assert parse_spec("data/web=2.5").weight == 2.5 and parse_spec("data/web").weight == 1.0
    assert parse_spec("a=b/file.jsonl").location == "a=b/file.jsonl"
    spec = parse_spec("hf:math-ai/AutoMathText:web=3")
    assert (spec.scheme, spec.location, spec.split, spec.weight, spec.tag) == ("hf", "math-ai/AutoMathText", "web", 3.0,
                                                                              "math-ai/AutoMathText")
    assert parse_spec("hf:GAIR/MathPile:textbooks:train").config == "textbooks"
    with pytest.raises(CorpusError, match="expected tfds:NAME"):
        parse_spec("tfds:a:b:c")
    with pytest.raises(CorpusError, match="weight must be >= 0"):
        parse_spec("x=-1")


@pytest.mark.shared
@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/jiuzhang_samples is absent")
def test_released_samples_as_qa_records(tmp_path):
    report = run_corpus(tmp_path, f"corpus.sources={SAMPLES / 'finetune_data_sampled.jsonl'}",
                        "corpus.max_snippets=200")
    rows = snippets(tmp_path)
    assert report["snippets"] == 200 and all(len(r["text"]) <= 1000 for r in rows)
    assert {r["source"] for r in rows} == {"finetune_data_sampled"}
