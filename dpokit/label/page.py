"""The labelling page: one static HTML document. It holds no data; what it shows comes from
``/api/state`` as JSON and goes in with ``textContent`` only (never ``innerHTML``)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dpokit label</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 12px 20px; color: #222; }
  header { display: flex; justify-content: space-between; align-items: baseline; gap: 1em; }
  #progress { font-weight: 600; }
  #bar { height: 6px; background: #e6e6e6; border-radius: 3px; margin: 6px 0 14px; }
  #bar > div { height: 100%; background: #4a7; border-radius: 3px; width: 0; }
  .box { border: 1px solid #ccc; border-radius: 6px; padding: 8px 12px; margin-bottom: 12px; background: #fafafa; }
  .answers { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
  .answers .box { background: #fff; }
  h2 { font-size: 14px; margin: 0 0 4px; color: #555; }
  .turn { margin: 4px 0; }
  .role { font-size: 12px; color: #777; text-transform: uppercase; }
  pre { white-space: pre-wrap; word-wrap: break-word; font: inherit; margin: 0; }
  nav { display: flex; gap: 8px; flex-wrap: wrap; margin: 10px 0; }
  button { font: inherit; padding: 6px 14px; cursor: pointer; }
  kbd { border: 1px solid #bbb; border-radius: 3px; padding: 0 4px; font-size: 12px; }
  #status { color: #666; min-height: 1.4em; }
  #status.error { color: #b00; font-weight: 600; }
</style>
</head>
<body>
<header>
  <div><span id="progress">loading</span> <span id="who"></span></div>
  <div id="source"></div>
</header>
<div id="bar"><div></div></div>
<main id="task" hidden>
  <section class="box"><h2>Prompt</h2><div id="prompt"></div></section>
  <div class="answers">
    <section class="box"><h2>A</h2><div id="answer-a"></div></section>
    <section class="box"><h2>B</h2><div id="answer-b"></div></section>
  </div>
  <nav>
    <button data-choice="A"><kbd>1</kbd> A is better</button>
    <button data-choice="B"><kbd>2</kbd> B is better</button>
    <button data-choice="tie"><kbd>3</kbd> tie</button>
    <button data-choice="both bad"><kbd>4</kbd> both bad</button>
    <button id="undo"><kbd>u</kbd> undo the last</button>
  </nav>
</main>
<p id="finished" hidden>Every candidate is judged. <button id="undo-finished"><kbd>u</kbd> undo the last</button></p>
<div id="status"></div>
<script>
"use strict";
let state = null, busy = false;
const $ = id => document.getElementById(id);

function showTurns(el, turns) {
  el.replaceChildren();
  for (const t of turns) {
    const div = document.createElement("div");
    div.className = "turn";
    if (turns.length > 1) {
      const role = document.createElement("div");
      role.className = "role";
      role.textContent = t.role;
      div.append(role);
    }
    const pre = document.createElement("pre");
    pre.textContent = t.text;
    div.append(pre);
    el.append(div);
  }
}

function render(s) {
  state = s;
  $("progress").textContent = s.done + " of " + s.total;
  $("who").textContent = "judged by " + s.annotator;
  $("bar").firstElementChild.style.width = (s.total ? 100 * s.done / s.total : 0) + "%";
  const c = s.candidate;
  $("task").hidden = !c;
  $("finished").hidden = !!c;
  $("source").textContent = c ? c.source : "";
  document.body.dataset.candidate = c ? c.id : "";
  document.body.dataset.done = String(s.done);
  $("undo").disabled = $("undo-finished").disabled = !s.last;
  if (c) {
    showTurns($("prompt"), c.prompt);
    showTurns($("answer-a"), c.a);
    showTurns($("answer-b"), c.b);
  }
}

function say(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function post(path, body) {
  if (busy) return;
  busy = true;
  try {
    const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                 body: JSON.stringify(body)});
    const data = await r.json();
    if (r.status >= 500 || data.error) { say("not saved: " + data.error, true); return; }
    render(data);
    say(r.status === 409 ? "the page was behind; this is the current candidate" : "saved", false);
  } catch (e) {
    say("not saved: the server does not answer (" + e + ")", true);
  } finally {
    busy = false;
  }
}

function choose(choice) {
  if (state && state.candidate) post("/api/judge", {id: state.candidate.id, choice: choice});
}

function undo() {
  if (state && state.last) post("/api/undo", {id: state.last});
}

for (const b of document.querySelectorAll("button[data-choice]")) {
  b.addEventListener("click", () => choose(b.dataset.choice));
}
$("undo").addEventListener("click", undo);
$("undo-finished").addEventListener("click", undo);
const KEYS = {"1": "A", "2": "B", "3": "tie", "4": "both bad"};
document.addEventListener("keydown", e => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (KEYS[e.key]) { e.preventDefault(); choose(KEYS[e.key]); }
  else if (e.key === "u" || e.key === "U") { e.preventDefault(); undo(); }
});

fetch("/api/state").then(r => r.json()).then(render).catch(e => say("cannot reach the server (" + e + ")", true));
</script>
</body>
</html>
"""
