"""Readers: JSONL (also .gz), JSON arrays, CSV, Parquet and save_to_disk folders, streamed, with
errors that name file, line/row and field, and ``on_error=skip`` that counts what it skips."""

from __future__ import annotations

import gzip
import json

import pytest

from helpers.data import jsonl, options, run
from dpokit.data import iter_records, iter_rows
from dpokit.errors import UserError

ROWS = [{"prompt": "Q1", "chosen": " a", "rejected": " b"}, {"prompt": "Q2", "chosen": " c", "rejected": " d"}]
EXPECTED = [("Q1", " a", " b"), ("Q2", " c", " d")]


def triples(records) -> list[tuple]:
    return [(r.prompt, r.chosen, r.rejected) for r in records]


def test_jsonl_gz_and_json_array(tmp_path):
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    array = tmp_path / "d.json"
    array.write_text(json.dumps(ROWS))
    for path, wheres in ((gz, ["1", "2"]), (array, ["record 1", "record 2"])):
        recs, _ = run(path)
        assert triples(recs) == EXPECTED and [r.source for r in recs] == [f"{path}:{w}" for w in wheres]


def test_jsonl_is_read_line_by_line(tmp_path):
    """The first record comes out before the reader meets the broken third line."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n{broken\n")
    stream = iter_records(path, "pair", options(drop_conflicts=False))
    assert next(stream).prompt == "Q1"
    assert next(stream).prompt == "Q2"
    with pytest.raises(UserError) as exc:
        next(stream)
    assert exc.value.where == f"{path}:3"


def test_csv_rows_lines_and_json_list_cells(tmp_path):
    """A quoted cell spanning two lines: the next row's line number is 4. List fields may hold
    JSON lists; numbers and labels come as text."""
    path = tmp_path / "d.csv"
    path.write_text('prompt,chosen,rejected,weight\nQ1," a\nstill a", b,2\nQ2, c, d,0.5\n')
    recs, _ = run(path)
    assert triples(recs) == [("Q1", " a\nstill a", " b"), ("Q2", " c", " d")]
    assert [r.source for r in recs] == [f"{path}:2", f"{path}:4"] and [r.weight for r in recs] == [2.0, 0.5]
    rated = tmp_path / "r.csv"
    rated.write_text('prompt,responses,scores\nP,"[""x"", ""y""]","[1, 3]"\n')
    (rec,), report = run(rated, "list")
    assert report.format == "rated" and rec.completions == ["y", "x"] and rec.scores == [3.0, 1.0]
    tsv = tmp_path / "u.tsv"
    tsv.write_text("prompt\tcompletion\tlabel\nP\t x\tfalse\n")
    (rec,), _ = run(tsv, "unpaired")
    assert (rec.prompt, rec.completion, rec.desirable) == ("P", " x", False)


@pytest.mark.parametrize("text,line,field,words", [
    ("prompt,chosen,rejected\nP,a,b\nP,a\n", 3, "rejected", ["missing"]),  # a short row
    ("prompt,chosen,rejected\nP,a,b,extra\n", 2, None, ["4 fields", "header has 3"]),
    ("prompt,responses,scores\nP,\"[\"\"x\"\",\"\"y\"\"]\",\"[1, NaN]\"\n", 2, "scores", ["NaN"]),
    ("prompt,responses,scores\nP,\"[\"\"x\"\",\"\"y\"\"]\",\"[1, nope]\"\n", 2, "scores", ["JSON list"]),
    ("prompt,completion,label\nP,x,maybe\n", 2, "label", ["true or false", "maybe"]),
])
def test_csv_errors_name_line_and_field(tmp_path, text, line, field, words):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        run(path, "list" if "responses" in text else None)
    assert exc.value.where == f"{path}:{line}" and exc.value.field == field
    assert all(w in str(exc.value) for w in words), str(exc.value)


def test_parquet_in_batches_with_nested_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": f"good {i}", "rejected": f"bad {i}"}
            for i in range(2500)]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000)
    recs, _ = run(path)
    assert len(recs) == 2500 and recs[2499].source == f"{path}:row 2500"
    assert recs[7].prompt == [{"role": "user", "content": "q7"}]
    assert recs[7].chosen == [{"role": "assistant", "content": "good 7"}]
    bad = tmp_path / "nan.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "P", "responses": ["a", "b"], "scores": [1.0, float("nan")]}]), bad)
    with pytest.raises(UserError) as exc:
        run(bad, "list")
    assert exc.value.where == f"{bad}:row 1" and exc.value.field == "scores[1]"


def test_not_parquet_is_a_user_error(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_text("not parquet")
    with pytest.raises(UserError) as exc:
        run(path)
    assert exc.value.where == str(path) and "Parquet" in str(exc.value)


def test_save_to_disk_folders(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    recs, _ = run(tmp_path / "ds")
    assert triples(recs) == EXPECTED and recs[1].source == f"{tmp_path / 'ds'}:row 2"
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]),
                                   "test": datasets.Dataset.from_list(ROWS[1:])})
    splits.save_to_disk(str(tmp_path / "dd"))
    recs, _ = run(tmp_path / "dd")
    assert triples(recs) == EXPECTED[:1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as exc:
        run(tmp_path / "empty")
    assert "save_to_disk" in str(exc.value)


HOSTILE = [
    json.dumps(ROWS[0]),
    '{"prompt": "P", "chosen": " a", "rejected": NaN}',  # a NaN literal
    '{"prompt": "P", "chosen": 5, "rejected": " b"}',  # a wrong type
    '{"prompt": "P", "rejected": " b"}',  # a missing field
    '["not", "an", "object"]',
    '{"prompt": "P", "chosen": " a", "rejected": " b"',  # cut short
    '{"prompt": "", "chosen": " a", "rejected": " b"}',  # an empty string: a cleaning step drops it
    json.dumps(ROWS[1]),
]


def test_hostile_lines_stop_the_run_or_are_skipped_and_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(HOSTILE) + "\n")
    with pytest.raises(UserError) as exc:
        run(path)
    assert exc.value.where == f"{path}:2" and "NaN" in str(exc.value)
    recs, report = run(path, on_error="skip")
    assert triples(recs) == EXPECTED
    skipped = [(e["record"], e["reason"]) for e in report.events() if e["action"] == "skipped"]
    assert [w for w, _ in skipped] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert "field 'chosen': must be a string" in skipped[1][1] and "field 'chosen': missing" == skipped[2][1]
    assert report.counts[("dropped", "empty prompt")] == 1
    assert report.rows == 8 and report.records_out == 2 and report.total("skipped") == 5


def test_json_lines_in_a_json_file_get_a_hint(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with pytest.raises(UserError) as exc:
        run(path)
    assert exc.value.where == f"{path}:2" and ".jsonl" in str(exc.value)


def test_rows_of_every_reader_are_plain_dicts(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", ROWS)
    assert [row for _, row in iter_rows(path)] == ROWS


def test_utf8_errors_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"prompt": "\xff"}\n')
    with pytest.raises(UserError) as exc:
        run(path)
    assert exc.value.where == f"{path}:2" and "UTF-8" in str(exc.value)
