"""An inspection as files: one self-contained HTML page (no network: the numbers are in
it, a few lines of script draw them) and PNG heat maps (matplotlib)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from tinytx_jax.inference.inspection import View

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tinytx-jax: inside the model</title>
<style>
body { font: 15px system-ui, sans-serif; margin: 2em; max-width: 70em; }
.chars { font: 16px ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; }
.chars span { padding: 1px 0; border-radius: 2px; }
.reply span { cursor: pointer; outline: 1px solid #ccd; margin: 0 1px; }
.reply span.on { outline: 2px solid #d33; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: 2px 8px; text-align: left; }
.note { color: #555; }
</style></head><body>
<h1>Inside the model</h1>
<p class="note">__NOTE__</p>
<div id="view"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
const v = JSON.parse(document.getElementById("data").textContent);
const root = document.getElementById("view");
const show = c => c === "\\n" ? "\\u23ce\\n" : c;
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  Object.assign(e, attrs || {});
  if (text !== undefined) e.textContent = text;
  return e;
}
function oddsTable(i) {
  const t = el("table");
  t.append(el("tr", {innerHTML: "<th>next character</th><th>probability</th>"}));
  for (const [c, p] of v.top[i]) {
    const r = el("tr"); r.append(el("td", {}, JSON.stringify(c)), el("td", {}, p.toFixed(4)));
    t.append(r);
  }
  return t;
}
function lensLine(i) {
  return v.lens.map((k, b) => `block ${b}: ${JSON.stringify(k[i])}`).join(", ");
}
if (v.kind === "reply") {
  let layer = 0, head = 0, pick = 0;
  const pickers = el("p");
  const selL = el("select"), selH = el("select");
  for (let i = 0; i < v.layers; i++) selL.append(el("option", {value: i}, `block ${i}`));
  for (let h = 0; h < v.heads; h++) selH.append(el("option", {value: h}, `head ${h}`));
  pickers.append("Attention of ", selL, " ", selH,
    " while writing the reply character picked below (darker: more attention).");
  const context = el("div", {className: "chars"});
  const reply = el("div", {className: "chars reply"});
  const detail = el("div");
  root.append(pickers, el("h2", {}, "Prompt and reply so far"), context,
    el("h2", {}, "Reply (pick a character)"), reply, detail);
  const spans = v.chars.map(c => el("span", {}, show(c)));
  spans.forEach(s => context.append(s));
  const picks = v.chars.slice(v.first).map((c, i) => {
    const s = el("span", {title: `loss ${v.loss[i].toFixed(3)}`}, show(c));
    s.onclick = () => { pick = i; draw(); };
    reply.append(s);
    return s;
  });
  function draw() {
    const row = v.attention[layer][head][pick] || [];
    spans.forEach((s, j) => {
      const w = j < row.length ? row[j] : 0;
      s.style.background = `rgba(220, 50, 50, ${Math.min(1, w * 1.5)})`;
      s.title = j < row.length ? `attention ${w.toFixed(4)}` : "not yet written";
    });
    picks.forEach((s, i) => s.classList.toggle("on", i === pick));
    detail.replaceChildren(
      el("h2", {}, `Writing ${JSON.stringify(v.chars[v.first + pick])}: the top odds`),
      oddsTable(pick),
      el("p", {className: "note"}, v.lens.length ? "Logit lens: " + lensLine(pick) : ""));
  }
  selL.onchange = () => { layer = +selL.value; draw(); };
  selH.onchange = () => { head = +selH.value; draw(); };
  if (picks.length) draw(); else detail.append(el("p", {}, "The reply is empty."));
} else {
  const text = el("div", {className: "chars"});
  const top = Math.max(...v.loss, 1e-9);
  v.chars.forEach((c, j) => {
    const i = j - v.first;
    const s = el("span", {}, show(c));
    if (i >= 0) {
      s.style.background = `rgba(220, 50, 50, ${(v.loss[i] / top).toFixed(3)})`;
      s.title = `loss ${v.loss[i].toFixed(3)}; expected ${JSON.stringify(v.top[i][0][0])}` +
        (v.lens.length ? "; " + lensLine(i) : "");
    }
    text.append(s);
  });
  const worst = el("table");
  worst.append(el("tr", {innerHTML:
    "<th>position</th><th>character</th><th>loss</th><th>expected</th>"}));
  for (const [p, c, l] of v.worst) {
    const r = el("tr");
    r.append(el("td", {}, p), el("td", {}, JSON.stringify(c)), el("td", {}, l.toFixed(3)),
      el("td", {}, JSON.stringify(v.top[p - v.first][0][0])));
    worst.append(r);
  }
  root.append(el("h2", {}, "Loss of every character (darker: harder)"), text,
    el("h2", {}, "The hardest characters"), worst);
}
</script></body></html>
"""


def page(view: View, note: str) -> str:
    """The HTML of `view`, everything inline."""
    payload = json.dumps(view.as_json()).replace("</", "<\\/")  # no "</script>" inside the data
    return PAGE.replace("__NOTE__", html.escape(note)).replace("__DATA__", payload)


def pictures(view: View, directory: Path) -> Path:
    """The reply's attention per block and head (rows: reply characters, columns: the
    characters before them), or a text's loss per character."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [c if c != "\n" else "\\n" for c in view.chars]
    if view.kind == "reply":
        path = directory / "attention.png"
        rows = len(view.attention[0][0]) if view.attention else 0
        width = len(view.chars)
        fig, axes = plt.subplots(
            view.layers * view.heads,
            1,
            figsize=(max(8, width * 0.14), 1.5 + rows * 0.3 * view.layers * view.heads),
            squeeze=False,
        )
        for n, ax in enumerate(axes[:, 0]):
            layer, head = divmod(n, view.heads)
            grid = [[0.0] * width for _ in range(rows)]
            for r, row in enumerate(view.attention[layer][head]):
                grid[r][: len(row)] = row
            top = max((max(row) for row in grid if row), default=1.0) or 1.0
            ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0, vmax=top, interpolation="nearest")
            ax.set_xticks(range(width), labels, fontsize=6, family="monospace")
            ax.set_yticks(range(rows), labels[view.first : view.first + rows], family="monospace")
            ax.set_title(
                f"block {layer}, head {head}: attention while writing each reply character"
            )
    else:
        path = directory / "loss.png"
        fig, ax = plt.subplots(figsize=(max(8, len(view.loss) * 0.08), 3))
        ax.bar(range(view.first, view.first + len(view.loss)), view.loss, color="#d33")
        ax.set_xlabel("character position")
        ax.set_ylabel("loss (nats)")
        ax.set_title("loss of every character")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(view: View, directory: Path, note: str) -> tuple[Path, Path]:
    """The page and the picture of `view` in `directory`; their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    page_path = directory / "inspect.html"
    page_path.write_text(page(view, note), encoding="utf-8")
    return page_path, pictures(view, directory)
