"""``dpokit report``: one self-contained HTML page from real run folders (two tiny DPO runs, a real
``dpokit eval`` with a programmatic judge, a two-round online run), checked as text and in a real
browser (the ``page`` fixture: Playwright on Debian's Chromium)."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import struct
import zlib

import pytest

from dpokit.cli import main
from dpokit.precision import cpu_info
from dpokit.train import train
from helpers import config, metrics, tiny_model_dir, write_pairs
from helpers.online import tiny_online

PAYLOAD = "<script>window.pwned = 1</script> a review that ends the table </table> early"
PROMPTS = [PAYLOAD, "Review the quiet café on the corner.", "Review a film about bees.", "Review this lamp."]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two DPO runs on the same data with other learning rates and β (the first one registered),
    a ``dpokit eval`` of the first into its ``eval/``, and a two-round online run."""
    tmp = tmp_path_factory.mktemp("report")
    model = tiny_model_dir(tmp)
    data, held = write_pairs(tmp / "pairs.jsonl", n=12), write_pairs(tmp / "held.jsonl", n=6, seed=1)
    common = dict(data__eval=str(held), train__max_steps=4, train__eval_steps=2, train__logging_steps=1)
    a, b = tmp / "runs" / "lr-1e-3", tmp / "runs" / "lr-3e-3"
    train(config(model, data, a, train__registry=str(tmp / "registry"), **common))
    train(config(model, data, b, train__lr=3e-3, loss__beta=0.2, **common))
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    assert main(["eval", "--model", str(a / "final"), "--ref-model", str(model), "--prompts", str(prompts),
                 "--judge", "helpers.judges:count_e", "--pairs", str(held), "--max-new-tokens", "6",
                 "--output", str(a / "eval"), "--registry", str(tmp / "registry")]) == 0
    tiny_online(tmp, tmp / "online", online__rounds=2)
    out = tmp / "report.html"
    assert main(["report", str(a), str(b), str(tmp / "online"), "-o", str(out),
                 "--registry", str(tmp / "registry")]) == 0
    return {"tmp": tmp, "a": a, "b": b, "online": tmp / "online", "html": out.read_text(encoding="utf-8"),
            "path": out}


def shown(v: float) -> str:
    return f"{v:.6g}"


def last(rows: list[dict], key: str) -> float:
    return [r[key] for r in rows if key in r][-1]


def test_the_page_holds_both_runs_numbers(runs):
    html = runs["html"]
    for run in (runs["a"], runs["b"]):
        rows = metrics(run)
        for key in ("loss", "rewards/margins", "eval/loss", "eval/rewards/accuracies", "eval/kl/approx"):
            assert f'<td class="num">{shown(last(rows, key))}</td>' in html, (run.name, key)
    assert metrics(runs["a"])[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # real DPO runs: step 1 at ln 2
    report = json.loads((runs["a"] / "eval" / "eval_report.json").read_text())
    assert f'<td class="num">{shown(report["win_rate"])}</td>' in html
    assert f'<td class="num">{shown(report["kl_sampled"])}</td>' in html
    assert "lr-1e-3" in html and "lr-3e-3" in html


def test_curves_overlay_the_runs_with_a_legend_and_every_key_has_one(runs):
    html = runs["html"]
    keys = {k for r in metrics(runs["a"]) + metrics(runs["b"]) for k in r if k not in ("step", "epoch")}
    curves = re.findall(r"<figure><svg.*?</svg>", html, re.S)
    online_rounds = json.loads((runs["online"] / "online_report.json").read_text())["rounds"]
    per_round = {k for r in runs["online"].glob("round-*") for row in metrics(r) for k in row} - {"step", "epoch"}
    assert len(curves) == len(keys | per_round) + 3  # + reward-KL: online rounds, evaluations, held-out accuracy
    loss = next(c for c in curves if ">loss<" in c)
    assert ">lr-1e-3<" in loss and ">lr-3e-3<" in loss  # the legend names both runs
    assert len(online_rounds) == 2


def test_reward_kl_across_online_rounds_and_evaluations(runs):
    html = runs["html"]
    section = html[html.index('<section id="reward-kl">'):]
    section = section[:section.index("</section>")]
    assert "online rounds (0 = initial model)" in section
    rounds = json.loads((runs["online"] / "online_report.json").read_text())["rounds"]
    # each round's point is labelled with its number next to the round-0 start
    assert all(f">{r['round']}<" in section for r in rounds) and ">0<" in section
    assert "judge win rate over the reference" in section  # the evaluations' plot:
    assert ">lr-1e-3/eval (v1)<" in section  # the run's evaluation, its version named
    assert ">online/round-2/eval<" in section
    versions = html[html.index('<section id="versions">'):]  # --registry: the versions with an evaluation
    report = json.loads((runs["a"] / "eval" / "eval_report.json").read_text())
    assert versions.startswith('<section id="versions"><h2>Registry versions with an evaluation</h2>')
    assert '<td>v1</td>' in versions[:versions.index("</section>")]
    assert f'<td class="num">{shown(report["win_rate"])}</td>' in versions[:versions.index("</section>")]


def test_lineage_machine_config_and_data_report(runs):
    html = runs["html"]
    machine = json.loads((runs["a"] / "machine.json").read_text())
    assert machine["cpu"] == cpu_info()["cpu"] and machine["threads"] == cpu_info()["threads"]
    assert machine["device"] == "cpu" and machine["precision"] == "fp32"
    assert html.count(f"<dd>{machine['cpu']}</dd>") >= 2  # both runs
    assert "<dd>" + ", ".join(machine["flags"]) + "</dd>" in html
    version = json.loads((runs["tmp"] / "registry" / "versions" / "v1.json").read_text())
    assert version["run"] == str(runs["a"].resolve())
    assert f"<b>v1</b> of {runs['tmp'] / 'registry'}, created {version['created']}" in html
    assert version["model_sha256"] in html
    assert "max_steps: 4" in html and "beta: 0.2" in html  # the resolved config.yaml of each run
    data = json.loads((runs["a"] / "data_report_train.json").read_text())
    for reason, count in data["altered"].items():
        first = next(e["record"] for e in data["events"] if e["reason"] == reason)
        assert f"<td>{reason}</td><td class=\"num\">{count}</td><td>{first}" in html


def _samples(runs) -> list[dict]:
    return [json.loads(x) for x in (runs["a"] / "eval" / "samples.jsonl").read_text().splitlines()]


def test_samples_table_escapes_the_payload(runs):
    html = runs["html"]
    assert "<script>window.pwned" not in html and "</table> early" not in html
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt; a review that ends the table &lt;/table&gt; early" in html
    samples = _samples(runs)
    assert [s["prompt"] for s in samples] == PROMPTS
    assert all(s["score_policy"] == s["policy"].lower().count("e") for s in samples)  # the judge's scores, saved


def test_in_the_browser_no_script_from_data_runs_and_the_text_shows(runs, page):
    page.goto(runs["path"].as_uri())
    assert page.evaluate("typeof window.pwned") == "undefined"
    # not only blocked by the page's policy: the payload made no element at all
    assert page.evaluate("document.scripts.length") == 1 and page.locator("main img").count() == 0
    cell = page.locator(".samples td", has_text="<script>window.pwned = 1</script>")
    assert cell.count() == 1 and cell.first.is_visible()
    assert "</table> early" in cell.first.inner_text()
    rows = page.locator("#evaluations .samples").first.locator("tbody tr")  # run a's evaluation comes first
    assert rows.count() == len(PROMPTS)  # a </table> in the data broke nothing out of the table
    assert page.locator(".samples .count").first.inner_text() == f"{len(PROMPTS)} of {len(PROMPTS)} shown"


def png_colours(png: bytes) -> int:
    """Distinct pixel colours of a PNG, decoded here (8-bit RGB or RGBA, no interlace: what Chromium writes)."""
    try:
        from PIL import Image

        return len(Image.open(io.BytesIO(png)).convert("RGB").getcolors(maxcolors=1 << 24))
    except ImportError:
        pass
    width, height, depth, kind = struct.unpack(">IIBB", png[16:26])
    assert depth == 8 and kind in (2, 6)
    chunks, pos = b"", 8
    while pos < len(png):
        size, name = struct.unpack(">I4s", png[pos:pos + 8])
        chunks += png[pos + 8:pos + 8 + size] if name == b"IDAT" else b""
        pos += size + 12
    raw, channels = zlib.decompress(chunks), 3 if kind == 2 else 4
    stride, prev, colours = width * channels, bytearray(width * channels), set()
    for y in range(height):
        kind_of_filter, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            p = a + b - c
            paeth = a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else b if abs(p - b) <= abs(p - c) else c
            pred = [0, a, b, (a + b) // 2, paeth]
            line[i] = (line[i] + pred[kind_of_filter]) & 0xFF
        colours |= {bytes(line[i:i + 3]) for i in range(0, stride, channels)}
        prev = line
    return len(colours)


def test_plots_are_drawn(runs, page):
    page.goto(runs["path"].as_uri())
    for figure in (page.locator("#curves svg").first, page.locator("#reward-kl svg").first):
        box = figure.bounding_box()
        assert box["width"] > 300 and box["height"] > 150
        assert png_colours(figure.screenshot()) > 10  # axes, ticks, lines and text, not a blank box


def test_a_phone_sees_no_horizontal_overflow(runs, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = context.new_page()
    phone.goto(runs["path"].as_uri())
    assert phone.evaluate("document.documentElement.scrollWidth <= innerWidth")
    assert phone.locator("#curves svg").first.bounding_box()["width"] <= 390
    assert phone.locator(".samples thead").first.is_hidden()  # samples become cards
    name = phone.locator("#final code", has_text="rewards/accuracies").first  # a wide table scrolls in its box,
    assert name.bounding_box()["width"] > 100  # its cells keep their words whole
    context.close()


def test_search_and_winner_filter_the_samples(runs, page):
    page.goto(runs["path"].as_uri())
    box = page.locator("#evaluations .samples").first
    visible = box.locator("tbody tr:visible")
    box.locator("input").fill("pwned")
    assert visible.count() == 1
    box.locator("input").fill("review")
    assert visible.count() == sum("review" in json.dumps(s, ensure_ascii=False).lower() for s in _samples(runs))
    box.locator("input").fill("")
    judged = [s["judge"] for s in _samples(runs)]
    expected = {"policy": sum(p is not None and p > 0.5 for p in judged), "reference": sum(p is not None and p < 0.5
                for p in judged), "tie": judged.count(0.5), "failed": judged.count(None)}
    for who, n in expected.items():
        box.locator("select").select_option(who)
        assert visible.count() == n, who
        assert box.locator(".count").inner_text() == f"{n} of {len(PROMPTS)} shown"
    assert sum(expected.values()) == len(PROMPTS) and max(expected.values()) > 0
    box.locator("select").select_option("tie")
    box.locator("input").fill("bees")  # both filters at once: the third prompt, if it was a tie
    assert visible.count() == int(judged[2] == 0.5)


def test_a_folder_without_metrics_is_one_line_naming_it(runs, tmp_path, capsys):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    assert main(["report", str(runs["a"]), str(empty), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{empty}: no metrics.jsonl here" in err
    assert not (tmp_path / "r.html").exists()


def test_a_bad_json_line_is_named_by_file_and_line(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run, ignore=shutil.ignore_patterns("final", "data_cache"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run / 'metrics.jsonl'}:3: not valid JSON" in err
    # a last line cut by a kill is left out with a note; the rest is shown
    (run / "metrics.jsonl").write_text("\n".join(lines[:2] + lines[3:]) + "\n" + lines[2])
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 0
    assert f"{run / 'metrics.jsonl'}:{len(lines)}: an incomplete last line" in (tmp_path / "r.html").read_text()


def test_machine_json_keeps_an_earlier_machine_on_resume(tmp_path):
    from dpokit.train.setup import record_machine

    here = {"cpu": "CPU A", "flags": ["avx2"], "device": "cpu", "threads": 2}
    record_machine(tmp_path, here)
    record_machine(tmp_path, here)  # resumed on the same machine: one record
    first = json.loads((tmp_path / "machine.json").read_text())
    assert "earlier" not in first and first["cpu"] == "CPU A"
    record_machine(tmp_path, {**here, "cpu": "CPU B", "threads": 8})  # resumed elsewhere
    second = json.loads((tmp_path / "machine.json").read_text())
    assert second["cpu"] == "CPU B" and second["threads"] == 8
    assert [e["cpu"] for e in second["earlier"]] == ["CPU A"] and second["earlier"][0]["started"] == first["started"]


def test_a_run_named_like_markup_stays_text_in_tables_and_figures(runs, tmp_path, page):
    """Folder names reach the page in headings, tables and the figures' legends (matplotlib's SVG text)."""
    name = '<img src=x onerror="window.pwned=2">'
    run = tmp_path / name
    shutil.copytree(runs["b"], run, ignore=shutil.ignore_patterns("final", "data_cache", "eval"))
    out = tmp_path / "r.html"
    assert main(["report", str(runs["b"]), str(run), "-o", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert "<img" not in html and html.count("&lt;img src=x onerror=") >= 3  # runs list, table, legends
    page.goto(out.as_uri())
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("#final th", has_text=name).count() == 1
    assert page.locator("#curves svg text", has_text=name).count() >= 1


def test_bad_samples_and_data_reports_are_named_by_file_and_line(runs, tmp_path, capsys):
    evaluation = tmp_path / "eval"
    shutil.copytree(runs["a"] / "eval", evaluation)
    lines = (evaluation / "samples.jsonl").read_text().splitlines()
    (evaluation / "samples.jsonl").write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    assert main(["report", str(runs["b"]), "--eval", str(evaluation), "-o", str(tmp_path / "r.html")]) == 2
    assert f"{evaluation / 'samples.jsonl'}:2: not valid JSON" in capsys.readouterr().err
    run = tmp_path / "run"
    shutil.copytree(runs["b"], run, ignore=shutil.ignore_patterns("final", "data_cache"))
    text = (run / "data_report_train.json").read_text()
    (run / "data_report_train.json").write_text(text.replace('"records_out"', 'records_out', 1))
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 2
    line = text[:text.index('"records_out"')].count("\n") + 1
    assert f"{run / 'data_report_train.json'}:{line}: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_the_page_fetches_nothing(runs, page):
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(runs["path"].as_uri())
    page.locator("#evaluations .samples input").first.fill("review")
    assert requests == [runs["path"].as_uri()]  # the file itself, nothing else
    html = runs["html"]
    assert "<link" not in html and "@import" not in html and not re.search(r"""(?:src|href)=["'](?!#)""", html)
