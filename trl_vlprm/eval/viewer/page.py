"""The HTML page of `trl-vlprm view`: one file, its style and script inline, no request to anything.

The data sits in two `application/json` script blocks (the questions, and the images as data URIs, each image once);
the script renders one page of questions at a time, so 10,000 questions cost one `JSON.parse` and a page of DOM.

DOM the browser test reads: `.question[data-id]` blocks; in each, `.solution` blocks whose `.step[data-type]` rows
hold a `.truth` cell and one `.score[data-score]` cell per run (background `scoreColour(score)`); `#count` says how
many questions the filters keep.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from trl_vlprm.eval.viewer.summary import COLOUR_SCRIPT

CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { padding: 10px 16px; background: #fff; border-bottom: 1px solid #ddd; }
header h1 { font-size: 18px; margin: 0 0 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 6px 10px; background: #fff; }
.card h3 { margin: 0; font-size: 14px; } .card p { margin: 2px 0 4px; max-width: 430px; color: #555; }
table.runs { border-collapse: collapse; margin: 6px 0; } table.runs td, table.runs th { padding: 2px 8px;
  border-bottom: 1px solid #eee; text-align: left; }
#controls { position: sticky; top: 0; z-index: 2; padding: 8px 16px; background: #eef2f7;
  border-bottom: 1px solid #ccd; display: flex; flex-wrap: wrap; gap: 14px; align-items: center; }
main { padding: 8px 16px; }
.question { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 10px 0; padding: 8px 12px; }
.qhead { display: flex; gap: 14px; align-items: flex-start; }
.qhead img { max-width: 200px; max-height: 200px; border: 1px solid #ccc; image-rendering: pixelated; }
.prompt { white-space: pre-wrap; margin: 0; font: 12px/1.35 ui-monospace, monospace; max-height: 180px;
  overflow: auto; }
.meta span { margin-right: 12px; } .ok { color: #2e7d32; font-weight: 600; } .bad { color: #c62828; font-weight: 600; }
.solution { margin: 6px 0 0; border-top: 1px dashed #ddd; padding-top: 4px; }
.solution.picked { background: #f3f8ff; }
.sol-head span { margin-right: 10px; color: #444; }
.sol-head .pick { background: #1565c0; color: #fff; border-radius: 3px; padding: 0 4px; font-size: 11px; }
table.steps { border-collapse: collapse; width: 100%; } table.steps td { padding: 2px 6px; vertical-align: top;
  border-bottom: 1px solid #f0f0f0; }
td.text { white-space: pre-wrap; font: 12px/1.35 ui-monospace, monospace; }
td.score, td.truth, td.mc { width: 56px; text-align: center; font-variant-numeric: tabular-nums; }
td.type { width: 70px; color: #666; font-size: 11px; } td.judge { width: 70px; font-size: 11px; }
.step.hidden { display: none; } .firsterr { outline: 2px solid #c62828; }
th.run { font-size: 11px; color: #333; font-weight: 600; max-width: 120px; }
.missing { color: #c62828; font-size: 11px; }
"""

SCRIPT = r"""
const DATA = JSON.parse(document.getElementById("view-data").textContent);
const IMAGES = JSON.parse(document.getElementById("view-images").textContent);
const PAGE = DATA.page_size;
let page = 0, kept = [];
const $ = (id) => document.getElementById(id);
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function fmt(s) { return s === null || s === undefined ? "" : Number(s).toFixed(2); }
function scorer() { return $("f-scorer") ? $("f-scorer").value : ""; }
function keep(q) {
  const f = q.flags, name = scorer();
  if ($("f-wrong") && $("f-wrong").checked && !f.wrong.includes(name)) return false;
  if ($("f-mcjudge") && $("f-mcjudge").checked && !(f.mcjudge > 0)) return false;
  if ($("f-disagree") && $("f-disagree").checked && !((f.disagree[name] || 0) > 0)) return false;
  const type = $("f-type") ? $("f-type").value : "";
  if (type && !f.types.includes(type)) return false;
  return true;
}
function sortKey(q, how) {
  const name = scorer();
  if (how === "lowest") return q.flags.min[name] === undefined ? 2 : q.flags.min[name];
  if (how === "disagree") return -(q.flags.disagree[name] || 0) - q.flags.mcjudge;
  if (how === "wrong") return q.flags.wrong.includes(name) ? 0 : 1;
  return 0;
}
function refresh() {
  const how = $("sort").value;
  kept = DATA.questions.map((q, i) => i).filter((i) => keep(DATA.questions[i]));
  if (how !== "file") {
    const keys = new Map(kept.map((i) => [i, sortKey(DATA.questions[i], how)]));
    kept.sort((a, b) => keys.get(a) - keys.get(b) || a - b);
  }
  page = Math.min(page, Math.max(0, Math.ceil(kept.length / PAGE) - 1));
  render();
}
function render() {
  const main = $("questions");
  main.replaceChildren();
  const start = page * PAGE, stop = Math.min(kept.length, start + PAGE);
  $("count").textContent = kept.length + " of " + DATA.questions.length + " questions kept";
  $("page-info").textContent = kept.length ? "showing " + (start + 1) + "-" + stop : "nothing to show";
  const type = $("f-type") ? $("f-type").value : "";
  for (const i of kept.slice(start, stop)) main.appendChild(question(DATA.questions[i], type));
}
function question(q, type) {
  const box = el("section", {class: "question", "data-id": q.id});
  const head = el("div", {class: "qhead"});
  for (const k of q.images) {
    if (k === null) head.appendChild(el("span", {class: "missing"}, "[image not found]"));
    else head.appendChild(el("img", {src: IMAGES[k], alt: "image of question " + q.id}));
  }
  const right = el("div");
  right.appendChild(el("h2", {style: "font-size:14px;margin:0"}, "question " + q.id));
  const meta = el("div", {class: "meta"});
  if (q.gold !== null && q.gold !== undefined) meta.appendChild(el("span", {}, "gold: " + q.gold));
  if (q.category) meta.appendChild(el("span", {}, "category: " + q.category));
  right.appendChild(meta);
  if (q.prompt) right.appendChild(el("pre", {class: "prompt"}, q.prompt));
  if (q.runs.length) right.appendChild(runTable(q));
  head.appendChild(right);
  box.appendChild(head);
  q.solutions.forEach((s, k) => box.appendChild(solution(q, s, k, type)));
  return box;
}
function runTable(q) {
  const t = el("table", {class: "runs"});
  const h = el("tr");
  for (const c of ["run", "strategy / selection", "N", "answer", "result"]) h.appendChild(el("th", {}, c));
  t.appendChild(h);
  for (const r of q.runs) {
    const tr = el("tr", {class: "run", "data-run": r.name});
    tr.appendChild(el("td", {}, r.name));
    tr.appendChild(el("td", {}, r.method));
    tr.appendChild(el("td", {}, r.n === null || r.n === undefined ? "" : r.n));
    let answer = r.answer;
    const stepName = (k) => k === null || k === undefined ? "none" : "step " + (k + 1);  // steps count from 1
    if (r.first_error !== undefined) answer = "first error: gold " + stepName(r.first_error) +
      ", predicted " + stepName(r.predicted_first_error);
    tr.appendChild(el("td", {}, answer ?? ""));
    tr.appendChild(el("td", {class: r.correct ? "ok" : "bad"}, r.correct ? "right" : "wrong"));
    t.appendChild(tr);
  }
  return t;
}
function solution(q, s, k, type) {
  const runs = q.runs.filter((r) => r.solutions.includes(k));
  const picked = runs.filter((r) => r.pick === k);
  const box = el("div", {class: "solution" + (picked.length ? " picked" : ""), "data-solution": k});
  const head = el("div", {class: "sol-head"});
  head.appendChild(el("span", {}, "solution " + (k + 1)));
  if (s.answer !== null && s.answer !== undefined) head.appendChild(el("span", {}, "answer: " + s.answer));
  if (s.correct !== null && s.correct !== undefined)
    head.appendChild(el("span", {class: s.correct ? "ok" : "bad"}, s.correct ? "right" : "wrong"));
  if (s.rule) head.appendChild(el("span", {}, "rule: " + s.rule + (s.case ? " (" + s.case + ")" : "")));
  for (const r of picked) head.appendChild(el("span", {class: "pick"}, "picked by " + r.name));
  box.appendChild(head);
  const t = el("table", {class: "steps"});
  const h = el("tr");
  h.appendChild(el("th", {}, "type"));
  h.appendChild(el("th", {}, s.label ? "label" : "truth"));
  if (s.mc) { h.appendChild(el("th", {}, "MC")); h.appendChild(el("th", {}, "judge")); }
  for (const r of runs) h.appendChild(el("th", {class: "run"}, r.name));
  h.appendChild(el("th", {}, "step"));
  t.appendChild(h);
  s.steps.forEach((text, j) => {
    const tr = el("tr", {class: "step" + (type && s.types[j] !== type ? " hidden" : ""), "data-step": j,
                         "data-type": s.types[j] || ""});
    tr.appendChild(el("td", {class: "type"}, s.types[j] || ""));
    const truth = s.label ? s.label[j] : s.truth[j];
    const cell = el("td", {class: "truth", "data-truth": truth ?? ""}, truth === null || truth === undefined ? "?"
                    : truth ? "good" : "bad");
    if (truth !== null && truth !== undefined) cell.style.background = scoreColour(truth);
    tr.appendChild(cell);
    if (s.mc) {
      const mc = el("td", {class: "mc", "data-score": s.mc[j] ?? ""}, fmt(s.mc[j]));
      if (s.mc[j] !== null && s.mc[j] !== undefined) mc.style.background = scoreColour(s.mc[j]);
      tr.appendChild(mc);
      tr.appendChild(el("td", {class: "judge"}, s.judge[j] || ""));
    }
    for (const r of runs) {
      const scores = r.scores[r.solutions.indexOf(k)] || [];
      const score = scores[j];
      const td = el("td", {class: "score", "data-run": r.name, "data-score": score ?? ""}, fmt(score));
      if (score !== null && score !== undefined) td.style.background = scoreColour(score);
      if (r.first_error === j || r.predicted_first_error === j) td.classList.add("firsterr");
      tr.appendChild(td);
    }
    tr.appendChild(el("td", {class: "text"}, text));
    t.appendChild(tr);
  });
  box.appendChild(t);
  return box;
}
for (const id of ["f-wrong", "f-mcjudge", "f-disagree", "f-type", "f-scorer", "sort"])
  if ($(id)) $(id).addEventListener("change", () => { page = 0; refresh(); });
$("page-prev").addEventListener("click", () => { if (page > 0) { page--; render(); } });
$("page-next").addEventListener("click", () => {
  if ((page + 1) * PAGE < kept.length) { page++; render(); window.scrollTo(0, 0); }
});
refresh();
document.body.setAttribute("data-ready", "1");
document.body.setAttribute("data-ready-ms", performance.now().toFixed(0));  // load time, read by the benchmark
"""


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> block: "</" would end it."""
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def _controls(data: dict[str, Any]) -> str:
    scorers = data["scorers"]
    parts = []
    if scorers:
        options = "".join(f'<option value="{escape(name)}">{escape(name)}</option>' for name in scorers)
        parts.append(f'<label>run <select id="f-scorer">{options}</select></label>')
        parts.append('<label><input type="checkbox" id="f-wrong"> wrong picks</label>')
        parts.append('<label><input type="checkbox" id="f-disagree"> PRM and oracle disagree</label>')
    if data["kind_labelled"]:
        parts.append('<label><input type="checkbox" id="f-mcjudge"> MC and judge disagree</label>')
    if data["step_types"]:
        options = "".join(f'<option value="{escape(t)}">{escape(t)}</option>' for t in data["step_types"])
        parts.append(f'<label>step type <select id="f-type"><option value="">all</option>{options}</select></label>')
    sorts = [("file", "file order"), ("lowest", "lowest step score first"), ("disagree", "most disagreements first"),
             ("wrong", "wrong picks first")]  # fmt: skip
    options = "".join(f'<option value="{value}">{text}</option>' for value, text in sorts)
    parts.append(f'<label>sort <select id="sort">{options}</select></label>')
    parts.append(
        '<button id="page-prev">previous</button><span id="page-info"></span><button id="page-next">next</button>'
    )
    parts.append('<strong id="count"></strong>')
    return "".join(parts)


def render_page(data: dict[str, Any], images: list[str], header: str) -> str:
    """The whole page: `header` (HTML of the summary), the controls, the data blocks and the script."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(data['title'])}</title><style>{CSS}</style></head><body>"
        f'<header>{header}</header><div id="controls">{_controls(data)}</div><main id="questions"></main>'
        f'<script id="view-data" type="application/json">{_script_json(data)}</script>'
        f'<script id="view-images" type="application/json">{_script_json(images)}</script>'
        f"<script>{COLOUR_SCRIPT}{SCRIPT}</script></body></html>\n"
    )
