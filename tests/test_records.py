"""The record I/O layer (`jz3_jax.records`): JSON-lines reading with `file:line` errors and a
bad-record policy, atomic writing, shards, and the format dispatcher over every format."""

from __future__ import annotations

import json
import os

import pytest

from jz3_jax.errors import RecordError, UserError
from jz3_jax.records.formats import format_of, iter_rows
from jz3_jax.records.jsonl import BadRecords, expand, read_lines, write_lines
from jz3_jax.records.shards import ShardWriter, read_shards
from jz3_jax.runtime.paths import as_path


class StageError(UserError):
    """A stage's own error class, to check the reader raises the caller's type."""


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_a_bad_line_is_named_with_file_and_line_in_the_callers_error(tmp_path):
    path = _write(tmp_path / "a.jsonl", '{"x": 1}\n\n{"x": \n')
    with pytest.raises(StageError, match=r"a\.jsonl:3: not valid JSON"):
        list(read_lines(path, error=StageError))
    _write(path, '{"x": 1}\n[1, 2]\n')
    with pytest.raises(RecordError, match=r"a\.jsonl:2: expected a JSON object, got list"):
        list(read_lines(path))
    _write(path, '{"x": 1}\n{"y": 2}\n')
    with pytest.raises(StageError, match=r"a\.jsonl:2: no x$"):
        list(read_lines(path, error=StageError, validate=lambda r: None if "x" in r else "no x"))
    with pytest.raises(StageError, match=r"cannot read .*nowhere\.jsonl"):
        list(read_lines(tmp_path / "nowhere.jsonl", error=StageError))


def test_the_skip_policy_counts_bad_lines_and_keeps_the_good_ones(tmp_path):
    path = _write(tmp_path / "a.jsonl", '{"x": 1}\nnot json\n\n"str"\n{"x": 2}\n{"y": 3}\n\xff\n')
    bad = BadRecords("skip", key="stage.bad_records")
    lines = list(read_lines(path, bad, validate=lambda r: None if "x" in r else "no x"))
    assert [(line.number, line.record) for line in lines] == [(1, {"x": 1}), (5, {"x": 2})]
    assert bad.skipped == 4  # not JSON, a string, no x, the invalid UTF-8 byte; the blank line is not a record
    assert lines[1].where == f"{path}:5"
    with pytest.raises(RecordError, match=r"a\.jsonl:2: not valid JSON.*\(set stage\.bad_records=skip"):
        list(read_lines(path, BadRecords("error", key="stage.bad_records")))
    with pytest.raises(StageError, match="stage.bad_records must be 'error' or 'skip', got 'drop'"):
        BadRecords("drop", key="stage.bad_records", error=StageError)


def test_line_offsets_read_back_the_record(tmp_path):
    path = _write(tmp_path / "a.jsonl", '{"t": "é"}\n\n{"t": "b"}\n')
    data = path.read_bytes()
    assert [json.loads(data[line.start:line.end]) for line in read_lines(path)] == [{"t": "é"}, {"t": "b"}]


def test_files_of_a_glob_or_directory_are_read_in_sorted_order(tmp_path):
    for name, value in (("b.jsonl", 2), ("a.jsonl", 1), ("c.txt", 3)):
        _write(tmp_path / name, json.dumps({"v": value}) + "\n")
    assert [os.path.basename(p) for p in expand(str(tmp_path))] == ["a.jsonl", "b.jsonl"]
    assert [os.path.basename(p) for p in expand(str(tmp_path / "*.txt"))] == ["c.txt"]
    assert expand(str(tmp_path / "none-*.jsonl")) == []
    assert [line.record["v"] for line in read_lines(expand(str(tmp_path / "*.jsonl")))] == [1, 2]


def test_write_lines_is_whole_or_nothing(tmp_path):
    path = tmp_path / "out.jsonl"
    assert write_lines(path, [{"a": "ü"}, {"b": 2}]) == 2
    assert path.read_text(encoding="utf-8") == '{"a": "ü"}\n{"b": 2}\n'

    def broken():
        yield {"c": 3}
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        write_lines(path, broken())
    assert path.read_text(encoding="utf-8") == '{"a": "ü"}\n{"b": 2}\n'  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temp file left behind


def test_shards_are_read_back_and_a_broken_one_is_named(tmp_path):
    directory = as_path(tmp_path / "shards")
    writer = ShardWriter(directory, process_index=1, shard_size=2)
    for i in range(3):
        writer.add({"id": i})
    writer.flush()
    assert [line.record["id"] for line in read_shards(directory, required=("id",))] == [0, 1, 2]
    _write(tmp_path / "shards" / "part-00000-000000.jsonl", '{"id": 9}\n{"no_id": 1}\n')
    with pytest.raises(StageError, match=r"part-00000-000000\.jsonl:2: not a sample \(no field 'id'\) "
                                         r"\(remove the file to regenerate its samples\)"):
        list(read_shards(directory, "sample", required=("id",), error=StageError,
                         hint="remove the file to regenerate its samples"))


def test_format_of_names_every_record_format():
    assert [format_of(n) for n in ("a.jsonl", "a.json", "a.parquet", "a.array_record",
                                   "a.array_record-00001-of-00008", "a.md")] == \
        ["jsonl", "json", "parquet", "array_record", "array_record", None]


def test_json_files_hold_a_list_an_object_of_records_or_json_lines(tmp_path):
    listing = _write(tmp_path / "list.json", json.dumps([{"q": "a"}, 3, {"q": "b"}]))
    bad = BadRecords("skip")
    assert [(r.index, r.value) for r in iter_rows(str(listing), "json", bad)] == [(1, {"q": "a"}), (3, {"q": "b"})]
    assert bad.skipped == 1
    keyed = _write(tmp_path / "keyed.json", json.dumps({"7": {"q": "a"}, "8": {"q": "b"}}))
    assert [(r.key, r.value) for r in iter_rows(str(keyed), "json")] == [("7", {"q": "a"}), ("8", {"q": "b"})]
    lines = _write(tmp_path / "lines.json", '{"q": "a"}\n{"q": "b"}\n')
    assert [r.value["q"] for r in iter_rows(str(lines), "json")] == ["a", "b"]
    with pytest.raises(RecordError, match=r"list\.json: item 2: expected a JSON object"):
        list(iter_rows(str(listing), "json"))


def test_parquet_rows_through_the_dispatcher(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"q": ["a", "b"], "n": [1, 2]}), path)
    rows = list(iter_rows(str(path), "parquet"))
    assert [(r.index, r.value) for r in rows] == [(0, {"q": "a", "n": 1}), (1, {"q": "b", "n": 2})]
    assert rows[1].where == f"{path}: row index 1"
    _write(tmp_path / "broken.parquet", "not parquet")
    with pytest.raises(StageError, match="broken.parquet: not a readable Parquet file"):
        list(iter_rows(str(tmp_path / "broken.parquet"), "parquet", BadRecords(error=StageError)))


def test_array_record_rows_through_the_dispatcher(tmp_path):
    module = pytest.importorskip("array_record.python.array_record_module")
    path = str(tmp_path / "a.array_record")
    writer = module.ArrayRecordWriter(path, "group_size:1")
    for data in (b'{"q": "a"}', b"not json", b'{"q": "b"}'):
        writer.write(data)
    writer.close()
    bad = BadRecords("skip")
    assert [(r.index, r.value) for r in iter_rows(path, "array_record", bad)] == [(0, {"q": "a"}), (2, {"q": "b"})]
    assert bad.skipped == 1
    with pytest.raises(RecordError, match=r"a\.array_record: record 1: not valid JSON"):
        list(iter_rows(path, "array_record"))


def test_tfds_rows_through_the_dispatcher(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class Tiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"q": tfds.features.Text()}),
                                         disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, q in enumerate("abc"):
                yield i, {"q": q}

    builder = Tiny(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    path = str(builder.data_dir)
    rows = list(iter_rows(path, "tfds", split="train"))
    assert [r.value["q"] for r in rows] == [b"a", b"b", b"c"]  # TFDS returns text as bytes
    assert rows[0].where == f"{path}: split 'train' record 0"
    with pytest.raises(StageError, match="no split 'test'"):
        list(iter_rows(path, "tfds", BadRecords(error=StageError), split="test"))


def test_an_unknown_format_is_refused():
    with pytest.raises(RecordError, match="unknown record format 'csv'"):
        list(iter_rows("a.csv", "csv"))
