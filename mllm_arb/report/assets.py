"""The report's style sheet and its one small script, inlined into every page (no external files, fonts
or frameworks). Light and dark schemes follow `prefers-color-scheme`; the layout is one readable
column that holds from a phone's width to a laptop's; tables sort when a header is pressed."""

CSS = r"""
:root {
  color-scheme: light dark;
  --bg: #ffffff; --fg: #1b1f24; --muted: #59636e; --line: #d1d9e0; --card: #f6f8fa;
  --accent: #0a58b8; --ok: #116329; --ok-bg: #dafbe1; --bad: #a40e26; --bad-bg: #ffebe9;
  --na: #7a4f00; --na-bg: #fff8c5; --paper: #ffffff;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --fg: #e6edf3; --muted: #9ea8b3; --line: #30363d; --card: #161b22;
    --accent: #6cb6ff; --ok: #56d364; --ok-bg: #12301b; --bad: #ff8182; --bad-bg: #3c1618;
    --na: #e3b341; --na-bg: #37290b; --paper: #f4f6f8;
  }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif;
}
a { color: var(--accent); }
a:focus-visible, button:focus-visible, summary:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.skip { position: absolute; left: -999px; top: 0; }
.skip:focus { left: 0.5rem; top: 0.5rem; background: var(--bg); padding: 0.25rem 0.5rem; z-index: 2; }
header.top, main { max-width: 72rem; margin: 0 auto; padding-left: clamp(0.75rem, 3vw, 2rem); padding-right: clamp(0.75rem, 3vw, 2rem); }
header.top { padding-top: 1.5rem; }
main { padding-bottom: 4rem; }
h1 { font-size: clamp(1.4rem, 4vw, 2rem); line-height: 1.2; margin: 0 0 0.25rem; }
h2 { font-size: clamp(1.15rem, 3vw, 1.45rem); margin: 2.5rem 0 0.5rem; padding-top: 0.5rem; border-top: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.5rem 0 0.5rem; }
.sub, .muted, figcaption, .note { color: var(--muted); }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 0.88em; }
code { overflow-wrap: anywhere; }
code.nowrap, .nowrap { white-space: nowrap; overflow-wrap: normal; }
pre { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 0.75rem; overflow-x: auto; max-height: 28rem; }
nav.toc ol { display: flex; flex-wrap: wrap; gap: 0.25rem 1rem; padding: 0; margin: 0.75rem 0 0; list-style: none; counter-reset: toc; }
nav.toc li { counter-increment: toc; }
nav.toc li::before { content: counter(toc) ". "; color: var(--muted); }
.stages { display: flex; flex-wrap: wrap; gap: 0.4rem; margin: 0.75rem 0 0; padding: 0; list-style: none; }
.stages li { border: 1px solid var(--line); border-radius: 999px; padding: 0.1rem 0.65rem; font-size: 0.9rem; }
.stages li.present { background: var(--ok-bg); color: var(--ok); border-color: transparent; }
.stages li.absent { color: var(--muted); border-style: dashed; }
.stages li.unfinished { background: var(--na-bg); color: var(--na); border-color: transparent; }
.absent-note { background: var(--card); border: 1px dashed var(--line); border-radius: 6px; padding: 0.6rem 0.9rem; }
.warn { background: var(--na-bg); color: var(--na); border-radius: 6px; padding: 0.5rem 0.9rem; }
dl.facts { display: grid; grid-template-columns: minmax(8rem, max-content) 1fr; gap: 0.2rem 1rem; margin: 0.5rem 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
@media (max-width: 32rem) { dl.facts { grid-template-columns: 1fr; } dl.facts dd { margin-bottom: 0.4rem; } }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 46rem), 1fr)); gap: 1rem 1.5rem; }
figure { margin: 1rem 0; min-width: 0; }
figure img { display: block; width: auto; max-width: 100%; height: auto; background: var(--paper); border: 1px solid var(--line); border-radius: 6px; padding: 4px; }
figure.narrow img { max-width: min(100%, 44rem); }
.figs figure.wide { grid-column: 1 / -1; }
figure.wide img { max-width: min(100%, 68rem); }
figcaption { font-size: 0.92rem; margin-top: 0.35rem; }
.table-wrap { overflow-x: auto; margin: 0.5rem 0 1rem; -webkit-overflow-scrolling: touch; position: relative;
  /* shadows at an edge with more columns behind it: they scroll away with the content at its ends */
  background: linear-gradient(to right, var(--bg) 30%, transparent) left / 2.5rem 100% no-repeat local,
    linear-gradient(to left, var(--bg) 30%, transparent) right / 2.5rem 100% no-repeat local,
    radial-gradient(farthest-side at 0 50%, rgba(0,0,0,.22), transparent) left / 0.9rem 100% no-repeat scroll,
    radial-gradient(farthest-side at 100% 50%, rgba(0,0,0,.22), transparent) right / 0.9rem 100% no-repeat scroll; }
.table-wrap.overflows::after { content: "\2194  scroll sideways for more columns"; display: block; position: sticky; left: 0;
  color: var(--muted); font-size: 0.85rem; padding-top: 0.2rem; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; font-size: 0.95rem; }
caption { text-align: left; color: var(--muted); padding: 0 0 0.35rem; font-size: 0.92rem; }
th, td { padding: 0.35rem 0.6rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--card); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; white-space: nowrap; }
th button { all: unset; cursor: pointer; display: inline-flex; gap: 0.3rem; align-items: center; }
th button::after { content: "\2195"; color: var(--muted); font-size: 0.8em; }
th[aria-sort="ascending"] button::after { content: "\25B2"; color: var(--fg); }
th[aria-sort="descending"] button::after { content: "\25BC"; color: var(--fg); }
.badge { display: inline-block; border-radius: 999px; padding: 0 0.55rem; font-size: 0.85rem; font-weight: 600; white-space: nowrap; }
.yes { background: var(--ok-bg); color: var(--ok); }
.no { background: var(--bad-bg); color: var(--bad); }
.na { background: var(--na-bg); color: var(--na); }
.off { background: var(--line); color: var(--muted); }
span.none { color: var(--muted); cursor: help; }
details { margin: 0.5rem 0; }
summary { cursor: pointer; color: var(--accent); }
footer { color: var(--muted); font-size: 0.85rem; margin-top: 3rem; border-top: 1px solid var(--line); padding-top: 0.75rem; }
@media print { nav.toc, .skip { display: none; } figure { break-inside: avoid; } }
"""

#: sortable tables: a header button sorts its column (numbers by value via data-sort, text otherwise)
JS = r"""
(function () {
  "use strict";
  function key(cell) {
    var v = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    var n = Number(v);
    return v !== "" && !isNaN(n) ? n : v.toLowerCase();
  }
  function compare(x, y) {
    if (typeof x === "number" && typeof y === "number") return x - y;
    if (typeof x === "number") return -1;
    if (typeof y === "number") return 1;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  // a table wider than its column says so under it (and loses the note when the window grows)
  function mark() {
    document.querySelectorAll(".table-wrap").forEach(function (w) {
      w.classList.toggle("overflows", w.scrollWidth > w.clientWidth + 1);
    });
  }
  mark();
  window.addEventListener("resize", mark);
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, col) {
      var button = th.querySelector("button");
      if (!button) return;
      button.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var c = compare(key(a.cells[col]), key(b.cells[col]));
          return ascending ? c : -c;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
})();
"""
