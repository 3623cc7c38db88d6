"""The Open Bandit reader: bad rows on a small CSV written here, and on the shared OBD sample (which
a fresh clone lacks: those tests skip) the counts, and IPS of the BTS policy from the Random log
against a naive computation straight from the CSV."""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dpokit.data.report import DataReport
from dpokit.errors import UserError
from dpokit.rank.logs import off_policy_data
from dpokit.rank.obd import EmpiricalPolicy, read_obd, read_obd_items
from dpokit.rank.ope import estimate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the project
HEADER = ",timestamp,item_id,position,click,propensity_score,user_feature_0,user-item_affinity_0\n"


def small_log(tmp_path, *rows):
    path = tmp_path / "obd.csv"
    path.write_text(HEADER + "".join(f"{i},t,{r}\n" for i, r in enumerate(rows)))
    return path


@pytest.mark.parametrize("row,field,message", [("1,2,0,0,abc,0.0", "propensity", "in \\(0, 1\\]"),
                                               ("1,2,0,x,abc,0.0", "propensity_score", "not a number"),
                                               ("1,3,0,0.5,abc", "context.user-item_affinity_0", "missing feature column"),
                                               ("1,3,0,0.5,abc,", "user-item_affinity_0", "not a number"),
                                               ("99,2,0,0.5,abc,0.0", "item", "unknown item id '99'"),
                                               ("1,2,3,0.5,abc,0.0", "click", "0 or 1")])
def test_bad_rows_name_file_line_and_field(tmp_path, row, field, message):
    path = small_log(tmp_path, "1,1,0,0.5,abc,0.0", row)
    with pytest.raises(UserError, match=message) as err:
        read_obd(path, ["0", "1", "2"])
    assert err.value.where == f"{path}:3" and err.value.field == field
    report = DataReport()
    assert len(read_obd(path, ["0", "1", "2"], on_error="skip", report=report)) == 1
    assert report.total("skipped") == 1


needs_obd = pytest.mark.skipif(not (DATA / "obd-random-men.csv.gz").is_file(),
                               reason=f"the Open Bandit sample is not at {DATA} (../shared/data beside the project)")


def raw_rows(name):
    with gzip.open(DATA / name, "rt", newline="") as f:
        return list(csv.DictReader(f))


@needs_obd
def test_open_bandit_random_log_and_the_bts_estimate():
    """10 000 Random rows with 46 clicks at propensity 1/34; IPS of BTS's empirical position-wise
    frequencies equals Σ 34·f(item | position)·click / n from the raw CSV, and the three intervals
    cover the rate BTS's own log shows (69 clicks in 10 000)."""
    items = read_obd_items(DATA / "obd-random-men-items.csv")
    ids = [it["id"] for it in items]
    assert len(ids) == 34 and isinstance(items[0]["item_feature_0"], float)
    random_log, bts_log = read_obd(DATA / "obd-random-men.csv.gz", ids), read_obd(DATA / "obd-bts-men.csv.gz", ids)
    assert len(random_log) == 10000 and sum(r.click for r in random_log) == 46
    assert {r.propensity for r in random_log} == {1 / 34}
    target = EmpiricalPolicy(bts_log, ids, 3)
    np.testing.assert_allclose(target.probs.sum(1), 1.0)
    estimates = estimate(off_policy_data(random_log, target, ids))

    bts = raw_rows("obd-bts-men.csv.gz")
    freq, per_pos = Counter((r["position"], r["item_id"]) for r in bts), Counter(r["position"] for r in bts)
    rows = raw_rows("obd-random-men.csv.gz")
    naive = sum(freq[r["position"], r["item_id"]] / per_pos[r["position"]] / float(r["propensity_score"])
                * int(r["click"]) for r in rows) / len(rows)
    assert estimates[0].value == pytest.approx(naive)
    on_policy = sum(int(r["click"]) for r in bts) / len(bts)
    assert on_policy == 0.0069
    for est in estimates:
        assert est.low <= on_policy <= est.high, est.line()
