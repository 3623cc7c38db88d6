"""The one JSON Lines writer (``dpokit.store.atomic.write_jsonl``): rows streamed, gzip for ``.gz``,
and a failure, in the rows or on disk, leaves no file and no temporary behind."""

from __future__ import annotations

import gzip
import json

import pytest

from dpokit.store.atomic import write_jsonl
from dpokit.errors import UserError
from helpers.data import read_jsonl

ROWS = [{"prompt": "Héllo", "chosen": "a\nb"}, {"prompt": [{"role": "user", "content": "x"}], "n": 2}]


def test_rows_round_trip_unescaped(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, iter(ROWS))
    assert read_jsonl(path) == ROWS
    assert "Héllo" in path.read_text(encoding="utf-8")  # ensure_ascii off: text stays readable
    assert list(tmp_path.iterdir()) == [path]


def test_gz_is_gzip(tmp_path):
    path = tmp_path / "out.jsonl.gz"
    write_jsonl(path, ROWS)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == ROWS


def test_a_failing_row_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, ROWS[:1])

    def rows():
        yield ROWS[1]
        raise UserError("bad record", where="in.jsonl:2")

    with pytest.raises(UserError, match="bad record"):
        write_jsonl(path, rows())
    assert read_jsonl(path) == ROWS[:1] and list(tmp_path.iterdir()) == [path]


def test_a_disk_error_is_one_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="could not write"):
        write_jsonl(blocker / "out.jsonl", ROWS)  # its folder is a file
