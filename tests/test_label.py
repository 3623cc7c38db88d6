"""``dpokit label`` in a real browser, and ``dpokit data merge-votes``.

The page is driven by Playwright in Debian's Chromium against the real server (a ``dpokit label``
process); the file it writes is read back as it lies on disk and through the data pipeline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.config import DataConfig
from dpokit.data import DataReport, read_records
from dpokit.data.votes import pair_id
from dpokit.label import Session, read_candidates, start, swapped
from helpers import config, tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
CHOICES = {"A": "1", "B": "2", "tie": "3", "both bad": "4"}
BUTTON = {"A": "A is better", "B": "B is better", "tie": "tie", "both bad": "both bad"}


def write_eval_samples(path: Path, n: int) -> list[dict]:
    """Candidates as ``dpokit eval`` writes them (samples.jsonl: policy and reference answers)."""
    rows = [{"source": f"prompts.jsonl:{i + 1}", "prompt": f"Describe item {i} in one line.",
             "policy": f"Item {i} is a lovely thing.", "reference": f"Item {i} exists.", "judge": 0.5}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


class LabelProcess:
    """``dpokit label`` as a user runs it, on a free port; ``url`` from the line it prints."""

    def __init__(self, data: Path, out: Path, *args: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "dpokit.cli", "label", "--data", str(data), "--out",
                                      str(out), "--port", "0", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("open http"):
                self.url = line.split()[1]
                return
        raise AssertionError(f"no URL printed: {self.lines} {self.proc.stderr.read()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # no clean-up at all: what a crash or a power cut leaves
        self.proc.wait(timeout=10)


def shown(page) -> dict:
    page.wait_for_selector("body[data-candidate]", state="attached")
    return {"id": page.evaluate("document.body.dataset.candidate"), "a": page.text_content("#answer-a pre"),
            "progress": page.text_content("#progress")}


def act(page, choice: str, by_key: bool, done_after: int) -> None:
    if by_key:
        page.keyboard.press(CHOICES[choice])
    else:
        page.get_by_role("button", name=BUTTON[choice]).click()
    page.wait_for_selector(f"body[data-done='{done_after}']", state="attached")


# 20 judgements of 22 candidates: (choice, by keyboard?) for candidates 0..19
PLAN = [("A", True), ("B", False), ("tie", True), ("both bad", False), ("B", True), ("A", False), ("A", True),
        ("B", True), ("tie", False), ("A", True), ("B", False), ("both bad", True), ("A", False), ("B", True),
        ("A", True), ("tie", True), ("B", False), ("A", False), ("both bad", True), ("B", True)]
UNDONE_AT, FIRST_CHOICE = 8, "A"  # candidate 8 is first judged A, undone with u, then judged tie
RESTART_AFTER = 12  # judgements made before the server is killed and started again


def expected_vote(choice: str, a_is_policy: bool) -> str:
    if choice == "tie":
        return "tie"
    if choice == "both bad":
        return "tie (bothbad)"
    return "a" if (choice == "A") == a_is_policy else "b"


def test_a_labelling_session_with_an_undo_and_a_killed_server(page, tmp_path):
    rows = write_eval_samples(tmp_path / "samples.jsonl", 22)
    out = tmp_path / "prefs.jsonl"
    began = datetime.now(timezone.utc)
    server = LabelProcess(tmp_path / "samples.jsonl", out, "--annotator", "alice", "--seed", "3")
    page.goto(server.url)
    seen = []  # what the page showed for each candidate judged
    for i, (choice, by_key) in enumerate(PLAN):
        now = shown(page)
        assert now["progress"] == f"{i} of 22"
        assert now["a"] in (rows[i]["policy"], rows[i]["reference"])
        seen.append(now)
        if i == UNDONE_AT:
            act(page, FIRST_CHOICE, not by_key, i + 1)
            assert len(out.read_text().splitlines()) == i + 1
            page.keyboard.press("u")
            page.wait_for_selector(f"body[data-done='{i}']", state="attached")
            assert shown(page) == now  # the same candidate again, in the same order
            assert len(out.read_text().splitlines()) == i
        act(page, choice, by_key, i + 1)
        if i + 1 == RESTART_AFTER:
            before = shown(page)
            server.kill()
            server = LabelProcess(tmp_path / "samples.jsonl", out, "--annotator", "alice", "--seed", "3")
            page.goto(server.url)
            assert shown(page) == before  # resumed at the first unjudged candidate, in the same order
            assert "12 judged" in server.lines[0]
    assert shown(page)["progress"] == "20 of 22"
    server.kill()

    assert {s["a"] == rows[i]["policy"] for i, s in enumerate(seen)} == {True, False}  # both orders occur
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20 and out.read_bytes().endswith(b"\n")
    for i, (line, (choice, _), s) in enumerate(zip(lines, PLAN, seen)):
        row = json.loads(line)
        r = rows[i]
        a_is_policy = s["a"] == r["policy"]
        time = datetime.fromisoformat(row.pop("time").replace("Z", "+00:00"))
        assert began <= time <= datetime.now(timezone.utc) + timedelta(seconds=1)
        assert row == {"id": pair_id(r["prompt"], r["policy"], r["reference"]),
                       "source": f"{tmp_path / 'samples.jsonl'}:{i + 1}", "prompt": r["prompt"],
                       "response_a": r["policy"], "response_b": r["reference"],
                       "votes": [expected_vote(choice, a_is_policy)], "shown": "ab" if a_is_policy else "ba",
                       "annotator": "alice"}
        assert s["id"] == row["id"] and (not a_is_policy) == swapped(3, row["id"])  # the order --seed 3 gives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefs.jsonl", "prefs.jsonl.lock", "samples.jsonl"]

    # the data pipeline reads the file as votes: a and b votes are pairs, tie and both bad are ties
    votes = [json.loads(line)["votes"][0] for line in lines]
    report = DataReport()
    pairs = read_records(out, "pair", DataConfig(ties="keep"), report)
    assert report.format == "votes" and len(pairs) == 20
    for pair, vote, r in zip(pairs, votes, rows):
        assert pair.tie == (vote in ("tie", "tie (bothbad)"))
        if not pair.tie:
            assert pair.chosen == (r["policy"] if vote == "a" else r["reference"])
    assert len(read_records(out, "pair")) == sum(v in ("a", "b") for v in votes) == 14  # ties dropped by default


def test_dpo_trains_on_a_labelled_file(tmp_path):
    """The file ``dpokit label`` writes is training data as it is: one DPO step from its votes."""
    from dpokit.train import train

    rows = write_eval_samples(tmp_path / "samples.jsonl", 6)
    session = Session(read_candidates(tmp_path / "samples.jsonl"), tmp_path / "prefs.jsonl", "alice")
    for choice in ("A", "B", "A", "B", "tie", "A"):
        assert session.judge(session.current().id, choice)
    session.close()
    result = train(config(tiny_model_dir(tmp_path), tmp_path / "prefs.jsonl", tmp_path / "run", train__max_steps=1,
                          train__batch_size=5, data__max_length=32, data__max_prompt_length=16))
    assert result.steps == 1 and (tmp_path / "run" / "final" / "model.safetensors").is_file()
    report = json.loads((tmp_path / "run" / "data_report_train.json").read_text())
    assert report["format"] == "votes" and report["records_out"] == 5 and len(rows) == 6  # the tie is dropped


def serve_in_thread(data: Path, out: Path, **kwargs):
    server = start(data, out, port=0, annotator="test", log=lambda _: None, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server) -> None:
    server.shutdown()
    server.server_close()


PAYLOAD = "<script>window.__injected = 1</script></table><b id=bold>bold</b>"
ANSWER = "<img src=x onerror=\"window.__injected = 2\"></pre></div>"


def test_text_from_the_data_stays_text(page, tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"prompt": PAYLOAD, "chosen": ANSWER, "rejected": "</script>"}) + "\n")
    server = serve_in_thread(tmp_path / "c.jsonl", tmp_path / "prefs.jsonl")
    try:
        page.goto(server.url)
        page.wait_for_selector("body[data-candidate]", state="attached")
        assert page.text_content("#prompt pre") == PAYLOAD and page.is_visible("#prompt pre")
        assert {page.text_content("#answer-a pre"), page.text_content("#answer-b pre")} == {ANSWER, "</script>"}
        assert page.evaluate("window.__injected") is None
        assert page.locator("#bold").count() == 0 and page.locator("img").count() == 0
        page.keyboard.press("1")
        page.wait_for_selector("body[data-done='1']", state="attached")
        assert page.is_visible("#finished") and page.evaluate("window.__injected") is None
    finally:
        stop(server)
    assert json.loads((tmp_path / "prefs.jsonl").read_text())["prompt"] == PAYLOAD


def _outward_address() -> str | None:
    """This machine's address on its network (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_server_listens_on_loopback_only(tmp_path, capsys):
    write_eval_samples(tmp_path / "c.jsonl", 2)
    server = serve_in_thread(tmp_path / "c.jsonl", tmp_path / "prefs.jsonl")
    try:
        assert server.server_address[0] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
        outward = _outward_address()
        if outward is not None:  # the same port on the machine's network address refuses connections
            with pytest.raises(OSError):
                socket.create_connection((outward, server.port), timeout=2).close()
        # a page of another site (or a name pointed at 127.0.0.1) gets nothing written
        import urllib.request
        from urllib.error import HTTPError

        body = json.dumps({"id": server.session.current().id, "choice": "A"}).encode()
        for headers in ({"Content-Type": "text/plain"},
                        {"Content-Type": "application/json", "Origin": "http://evil.example"},
                        {"Content-Type": "application/json", "Host": f"evil.example:{server.port}"}):
            with pytest.raises(HTTPError) as err:
                urllib.request.urlopen(urllib.request.Request(server.url + "api/judge", body, headers))
            assert err.value.code == 403
        assert not (tmp_path / "prefs.jsonl").exists()
    finally:
        stop(server)
    assert capsys.readouterr().err == ""
    other = start(tmp_path / "c.jsonl", tmp_path / "other.jsonl", host="0.0.0.0", port=0, log=lambda _: None)
    other.server_close()
    assert "--host 0.0.0.0: the labelling page is open to other machines" in capsys.readouterr().err


def test_a_restart_drops_an_unfinished_line_and_refuses_a_foreign_one(tmp_path, capsys):
    write_eval_samples(tmp_path / "c.jsonl", 3)
    cands = read_candidates(tmp_path / "c.jsonl")
    out = tmp_path / "prefs.jsonl"
    session = Session(cands, out, "alice")
    assert session.judge(cands[0].id, "B") and not session.judge(cands[0].id, "B")  # a second click writes nothing
    with pytest.raises(Exception, match="another dpokit label is writing"):
        Session(cands, out, "bob")
    session.close()
    whole = out.read_text()
    with out.open("a") as f:
        f.write('{"id": "' + cands[1].id + '", "prom')  # a kill in the middle of an append
    notes = []
    session = Session(cands, out, "alice", log=notes.append)
    assert session.judged == [cands[0].id] and out.read_text() == whole and "incomplete last line" in notes[0]
    assert session.current() == cands[1]
    session.close()
    out.write_text(whole + json.dumps({"id": "0123456789abcdef", "votes": ["a"]}) + "\n")
    assert main(["label", "--data", str(tmp_path / "c.jsonl"), "--out", str(out), "--port", "0"]) == 2
    assert capsys.readouterr().err == (f"dpokit: error: {out}:2: field 'id': no candidate with this id in the "
                                       "candidates file (is --out from another file?)\n")


def test_candidates_from_each_kind_of_file(tmp_path, capsys):
    kinds = {
        "eval": {"prompt": "p", "policy": "x", "reference": "y", "judge": 1.0},
        "quickstart": {"source": "prompts.jsonl:1", "prompt": "p", "base": "z", "sft": "y", "dpo": "x"},
        "online": {"prompt": "p", "answers": ["x", "y", "z"], "scores": [1, 2, 3], "pairs": 1},
        "votes": {"prompt": "p", "response_a": "x", "response_b": "y", "votes": ["a"]},
        "list": {"prompt": "p", "responses": [{"response": "x", "score": 1}, {"response": "y", "score": 9}]},
        "pairs": {"prompt": "p", "chosen": "x", "rejected": "y"},
        "hh": {"chosen": "\n\nHuman: p\n\nAssistant: x", "rejected": "\n\nHuman: p\n\nAssistant: y"},
    }
    for name, row in kinds.items():
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
        (c,) = read_candidates(tmp_path / f"{name}.jsonl")
        chat = name == "hh"
        assert (c.prompt, c.first, c.second) == (([{"role": "user", "content": "p"}],
                                                  [{"role": "assistant", "content": "x"}],
                                                  [{"role": "assistant", "content": "y"}]) if chat else ("p", "x", "y"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(kinds["pairs"]) + "\n" + json.dumps({"prompt": "q", "chosen": "x", "rejected": 5}) + "\n")
    assert main(["label", "--data", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dpokit: error: {bad}:2: field 'rejected': ") and err.count("\n") == 1


def test_merge_votes_of_two_annotators_and_their_kappa(tmp_path, capsys):
    """Alice labels 7 candidates with the page's session; Bob's votes come from another tool, with
    candidate 2's answers the other way round (his 'a' there is Alice's 'b'), and he skipped
    candidate 7. The six shared candidates, votes (alice, bob):

        1 (a, a)  2 (a, b)  3 (b, b)  4 (tie, tie)  5 (a, tie (bothbad) = tie)  6 (b, b)

    P̄ = mean agreement of the pair on each candidate = (1 + 0 + 1 + 1 + 0 + 1) / 6 = 2/3.
    Of the 12 votes, a: 4, b: 5, tie: 3, so Pₑ = (4² + 5² + 3²) / 12² = 50/144.
    κ = (P̄ − Pₑ) / (1 − Pₑ) = (96 − 50) / (144 − 50) = 23/47 = 0.4894.
    """
    rows = write_eval_samples(tmp_path / "c.jsonl", 7)
    cands = read_candidates(tmp_path / "c.jsonl")
    alice = Session(cands, tmp_path / "alice.jsonl", "alice", seed=0)
    for cand, vote in zip(cands, ["a", "a", "b", "tie", "a", "b", "b"]):
        choice = {"tie": "tie"}.get(vote) or ("A" if (vote == "a") != alice_swapped(alice, cand) else "B")
        assert alice.judge(cand.id, choice)
    alice.close()
    bob = [("a", False), ("a", True), ("b", False), ("tie", False), ("tie (bothbad)", False), ("model_b", False)]
    with (tmp_path / "bob.jsonl").open("w") as f:
        for r, (vote, reversed_) in zip(rows, bob):
            a, b = (r["reference"], r["policy"]) if reversed_ else (r["policy"], r["reference"])
            f.write(json.dumps({"prompt": r["prompt"], "response_a": a, "response_b": b, "votes": [vote],
                                "annotator": "bob"}) + "\n")
    merged = tmp_path / "merged.jsonl"
    assert main(["data", "merge-votes", str(tmp_path / "alice.jsonl"), str(tmp_path / "bob.jsonl"), "-o",
                 str(merged)]) == 0
    printed = capsys.readouterr().out
    assert "Fleiss' kappa 0.4894" in printed and "66.7% of annotator pairs agree" in printed
    assert "votes by annotator: alice 7, bob 6" in printed
    got = [json.loads(line) for line in merged.read_text().splitlines()]
    assert [g["votes"] for g in got] == [["a", "a"], ["a", "b"], ["b", "b"], ["tie", "tie"], ["a", "tie (bothbad)"],
                                         ["b", "b"], ["b"]]
    assert [g["response_a"] for g in got] == [r["policy"] for r in rows]
    assert got[1]["annotators"] == ["alice", "bob"] and got[1]["sources"][1] == f"{tmp_path / 'bob.jsonl'}:2"
    report = DataReport()  # dpokit data stats reads the merged file to the same kappa
    read_records(merged, "pair", DataConfig(ties="keep"), report)
    assert report.agreement.summary()["fleiss_kappa"] == 0.4894
    with (tmp_path / "bob.jsonl").open("a") as f:
        f.write(json.dumps({"prompt": rows[0]["prompt"], "response_a": rows[0]["policy"],
                            "response_b": rows[0]["reference"], "votes": ["b"], "annotator": "bob"}) + "\n")
    assert main(["data", "merge-votes", str(tmp_path / "bob.jsonl"), "-o", str(merged)]) == 2
    assert capsys.readouterr().err == f"dpokit: error: {tmp_path / 'bob.jsonl'}:7: field 'annotator': 'bob' already " \
                                      f"voted on this candidate at {tmp_path / 'bob.jsonl'}:1\n"


def alice_swapped(session: Session, cand) -> bool:
    return swapped(session.seed, cand.id)
