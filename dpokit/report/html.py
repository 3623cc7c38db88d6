"""The page around the sections: escaping, tables, the style sheet and the one small script.

Every text that comes from a file (a run's name, a config value, a prompt, a model's answer) goes
through ``esc``. The page loads nothing: styles, the script and the SVG figures are inline, and its
Content-Security-Policy allows no fetch at all and only the script below (by its hash), so even a
string that slipped past escaping could neither run nor call out.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math

STYLE = """
:root { --fg:#1d1d1f; --muted:#5f6368; --line:#dadce0; --bg:#fff; --soft:#f5f6f7; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg);
       background:var(--bg); }
main { max-width:1200px; margin:0 auto; padding:12px 16px 48px; }
h1 { font-size:1.5rem; margin:.4em 0; }
h2 { font-size:1.2rem; margin:1.6em 0 .5em; border-bottom:1px solid var(--line); }
h3 { font-size:1.05rem; margin:1.2em 0 .4em; overflow-wrap:anywhere; }
p, li, dd, dt, summary { overflow-wrap:anywhere; }
td, th { overflow-wrap:break-word; }  /* not anywhere: a cell would shrink to one letter; the table scrolls instead */
.muted { color:var(--muted); font-size:.9em; }
.grid { display:grid; gap:12px; grid-template-columns:repeat(auto-fill, minmax(min(100%, 420px), 1fr)); }
figure { margin:0; padding:6px; border:1px solid var(--line); border-radius:6px; background:#fff; }
figure svg { display:block; width:100%; height:auto; }
figcaption { font-size:.85em; color:var(--muted); padding:2px 4px; }
.scroll { overflow-x:auto; max-width:100%; }
table { border-collapse:collapse; font-size:.9em; }
th, td { border:1px solid var(--line); padding:4px 8px; text-align:left; vertical-align:top; }
th { background:var(--soft); }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
pre { background:var(--soft); padding:8px; border-radius:4px; white-space:pre-wrap; overflow-wrap:anywhere;
      font-size:.85em; }
dl { display:grid; grid-template-columns:max-content 1fr; gap:2px 12px; margin:.4em 0; }
dt { font-weight:600; } dd { margin:0; }
details { margin:.4em 0; } summary { cursor:pointer; font-weight:600; }
.swatch { display:inline-block; width:.8em; height:.8em; border-radius:2px; margin-right:.3em; vertical-align:-.05em; }
.controls { display:flex; flex-wrap:wrap; gap:8px; align-items:center; margin:.4em 0; }
.controls input { flex:1 1 14em; min-width:0; font:inherit; padding:6px 8px; }
.controls select { font:inherit; padding:5px; }
.samples td.text { min-width:12em; max-width:32em; white-space:pre-wrap; }
.won { font-weight:600; }
[hidden] { display:none !important; }
@media (max-width:700px) {
  main { padding:8px 10px 32px; }
  dl { grid-template-columns:1fr; } dd { margin-bottom:.4em; }
  .samples table, .samples tbody, .samples tr, .samples td { display:block; width:100%; }
  .samples thead { display:none; }
  .samples tr { border:1px solid var(--line); border-radius:6px; margin-bottom:10px; padding:4px; }
  .samples td { border:0; max-width:none; }
  .samples td::before { content:attr(data-label); display:block; font-size:.8em; color:var(--muted); }
}
@media print { .controls { display:none; } details { display:block; } }
"""

SCRIPT = """
document.querySelectorAll('.samples').forEach(function (box) {
  var search = box.querySelector('input'), pick = box.querySelector('select'), count = box.querySelector('.count');
  var rows = Array.prototype.slice.call(box.querySelectorAll('tbody tr'));
  function apply() {
    var words = search.value.toLowerCase().split(/\\s+/).filter(Boolean), want = pick ? pick.value : '', shown = 0;
    rows.forEach(function (row) {
      var text = row.textContent.toLowerCase();
      var keep = words.every(function (w) { return text.indexOf(w) >= 0; }) && (!want || row.dataset.winner === want);
      row.hidden = !keep;
      if (keep) shown += 1;
    });
    count.textContent = shown + ' of ' + rows.length + ' shown';
  }
  search.addEventListener('input', apply);
  if (pick) pick.addEventListener('change', apply);
  apply();
});
"""


def esc(value) -> str:
    """Text for an HTML element or attribute: ``<``, ``>``, ``&`` and both quotes escaped."""
    return html.escape(str(value), quote=True)


def number(v) -> str:
    """A number as the page shows it: integers whole, others to 6 significant digits."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return esc(v)
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.6g}"


def cell(v) -> str:
    """A table cell for any JSON value: numbers right-aligned, lists and objects as compact JSON."""
    import json

    if v is None:
        return '<td class="muted">—</td>'
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f'<td class="num">{number(v)}</td>'
    if isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return f'<td class="num">[{", ".join(number(x) for x in v)}]</td>'
    if isinstance(v, (list, dict)):
        return f"<td><code>{esc(json.dumps(v, ensure_ascii=False))}</code></td>"
    return f"<td>{esc(v)}</td>"


def table(header: list[str], rows: list[list[str]], caption: str = "") -> str:
    """``rows`` hold finished ``<td>`` cells; ``header`` plain texts, escaped here."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    cap = f'<p class="muted">{esc(caption)}</p>' if caption else ""
    return f'{cap}<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def definitions(items: list[tuple[str, str]]) -> str:
    """A ``<dl>``; terms are escaped here, values arrive as finished HTML."""
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def figure(svg: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{svg}{cap}</figure>"


def _script_hash() -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")


def page(title: str, body: str) -> str:
    policy = f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src '{_script_hash()}'"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{policy}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><main>{body}</main><script>{SCRIPT}</script></body></html>\n")
