"""The building blocks of a report page: number formatting, sortable tables, embedded figures with
numbered captions, the page shell (`templates/page.html.jinja` with its inline style sheet and script,
and a Content-Security-Policy that forbids any fetch), and writing the file."""

from __future__ import annotations

import base64
import html
import math
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from ..core import verdicts as V
from ..core.files import atomic_write_bytes
from .study import finite

#: section bodies are built as HTML by the report's own code (every value escaped there); the shell
#: escapes what it fills in itself (the title, headings)
TEMPLATES = Environment(loader=PackageLoader("mllm_arb.report", "templates"), autoescape=True, keep_trailing_newline=True)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

#: conditions in the order the study reads them, with what their ratio measures
CONDITIONS = {
    "text_following": ("text-following", "MFR", "conflict; the instruction says to trust the text"),
    "vision_following": ("vision-following", "MFR", "conflict; the instruction says to trust the image"),
    "no_instruction": ("no instruction", "share following the text", "conflict without an instruction: the default preference"),
    "consistent": ("consistent context", "accuracy", "the context agrees with the image"),
    "image_only": ("image only", "accuracy", "no context"),
    "text_only": ("text only", "accuracy", "no image"),
}
CONTROLS = ("consistent", "image_only", "text_only")
SOURCE = {"text_following": "text context", "vision_following": "image"}

#: what each stage is for, and which command produces it (for the "absent" notes)


# ------------------------------------------------------------------------------------ formatting
def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def num(x: Any, digits: int = 3, signed: bool = False) -> str:
    if not finite(x):
        return "n/a"
    if isinstance(x, int):
        return f"{x:+d}" if signed else str(x)
    if abs(x) < 0.5 * 10**-digits:
        x = 0.0  # no "-0.000"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if finite(x) else "n/a"


def ci(lo: Any, hi: Any, digits: int = 3) -> str:
    return f"[{num(lo, digits)}, {num(hi, digits)}]" if finite(lo) and finite(hi) else "n/a"


def human(name: str) -> str:
    return CONDITIONS.get(name, (name.replace("_", " "),))[0]


def badge(verdict: Any) -> str:
    """A verdict (core/verdicts.py), or a bool for yes / no, as a coloured pill."""
    if not isinstance(verdict, str):
        verdict = {True: V.HOLDS, False: V.FAILS}.get(verdict, V.UNCHECKED)
    css = {V.HOLDS: "yes", V.FAILS: "no", V.UNDECIDED: "na"}.get(verdict, "off")
    return f'<span class="badge {css}">{verdict}</span>'


@dataclass
class Cell:
    """A table cell: what is shown (HTML) and what it sorts by."""

    html: str
    sort: Any = None
    numeric: bool = False


def na(reason: str) -> Cell:
    """A cell the run has no value for, by design, saying why (on hover and to screen readers). Missing
    values that are *not* by design stay blank or "n/a", so a test can tell them apart."""
    return Cell(f'<span class="none" title="{esc(reason)}" aria-label="{esc(reason)}">—</span>', "")


def cell(x: Any, digits: int = 3, signed: bool = False) -> Cell:
    if finite(x):
        return Cell(esc(num(x, digits, signed)), x, True)
    if isinstance(x, Cell):
        return x
    return Cell(esc("" if x is None else x))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None, sortable: bool = True,
          numeric_cols: Sequence[int] = ()) -> str:
    rows = [[c if isinstance(c, Cell) else cell(c) for c in r] for r in rows]
    if not rows:
        return ""
    numeric = {i for i in range(len(headers)) if i in numeric_cols or all(r[i].numeric for r in rows if i < len(r))}
    head = "".join(
        f'<th scope="col"{" class=num" if i in numeric else ""}>' + (f'<button type="button">{esc(h)}</button>' if sortable else esc(h)) + "</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for r in rows:
        tds = []
        for i, c in enumerate(r):
            attrs = ' class="num"' if i in numeric else ""
            if sortable and c.sort is not None:
                key = "" if isinstance(c.sort, float) and not math.isfinite(c.sort) else c.sort
                attrs += f' data-sort="{esc(key)}"'
            tds.append(f"<td{attrs}>{c.html}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    cls = ' class="sortable"' if sortable else ""
    return f'<div class="table-wrap"><table{cls}>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def facts(pairs: Iterable[tuple[str, Any]]) -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs if v not in (None, ""))
    return f'<dl class="facts">{items}</dl>'


# --------------------------------------------------------------------------------------- figures
def _svg_size(data: bytes) -> tuple[int, int] | None:
    head = data[:2000].decode("utf-8", "replace")
    m = re.search(r"<svg[^>]*?\swidth=\"([\d.]+)(pt|px)?\"[^>]*?\sheight=\"([\d.]+)(pt|px)?\"", head, re.S)
    if not m:
        return None
    scale = 4 / 3 if m.group(2) == "pt" else 1.0
    return round(float(m.group(1)) * scale), round(float(m.group(3)) * scale)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return None
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def _font_pt(data: bytes) -> float | None:
    """The smallest font size a figure file was drawn with (`plots.save` / `page_figures.to_svg` write it)."""
    from .plots import FONT_TAG

    m = re.search(re.escape(FONT_TAG).encode() + rb"[\x00=]([\d.]+)", data[:20000])
    return float(m.group(1)) if m else None


@dataclass
class Page:
    """A report page being assembled: numbered figures, sections and their table of contents."""

    title: str
    sections: list[tuple[str, str, str]] = field(default_factory=list)
    n_figures: int = 0

    def figure(self, data: bytes, mime: str, caption: str, name: str, narrow: bool = False) -> str:
        self.n_figures += 1
        size = _svg_size(data) if mime == "image/svg+xml" else _png_size(data)
        if mime == "image/png" and size:  # written at 150 dpi: show at about its drawn size
            size = (round(size[0] * 96 / 150), round(size[1] * 96 / 150))
        dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
        font = _font_pt(data)
        # the drawn width in points (96 px per 72 pt) and the smallest font: the browser check turns
        # them into the smallest text size as rendered
        if font and size:
            dims += f' data-font-pt="{font:g}" data-width-pt="{size[0] * 0.75:g}"'
        uri = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        wide = size is not None and size[0] > 860  # drawn wide (several panels): give it the full column
        cls = ' class="narrow"' if narrow else ' class="wide"' if wide else ""
        return (
            f'<figure id="fig-{esc(name)}"{cls} data-figure="{esc(name)}">'
            f'<img src="{uri}" alt="{esc(caption)}"{dims} decoding="sync">'
            f"<figcaption><strong>Figure {self.n_figures}.</strong> {esc(caption)}</figcaption></figure>"
        )

    def file_figure(self, path: Path, caption: str, narrow: bool = False) -> str:
        mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
        return self.figure(path.read_bytes(), mime, caption, path.stem, narrow)

    def svg(self, data: bytes, caption: str, name: str, narrow: bool = False) -> str:
        return self.figure(data, "image/svg+xml", caption, name, narrow)

    def add(self, sid: str, heading: str, body: str) -> None:
        self.sections.append((sid, heading, body))

    def render(self, intro: str, footer: str) -> str:
        asset = lambda name: Markup(TEMPLATES.loader.get_source(TEMPLATES, name)[0])  # noqa: E731
        sections = [{"id": sid, "heading": h, "body": Markup(b)} for sid, h, b in self.sections]
        return TEMPLATES.get_template("page.html.jinja").render(
            csp=Markup(CSP), title=self.title, intro=Markup(intro), footer=Markup(footer), sections=sections,
            css=asset("report.css"), js=asset("report.js"))


def absent(stage: str, what: str) -> str:
    return (
        f'<p class="absent-note" data-absent="{esc(stage)}">No <code>{esc(stage)}</code> run in this study, so this section '
        f"has no {esc(what)}. Run <code>mllm-arb {esc(stage)}</code> (or <code>mllm-arb run</code>, which chains every stage) "
        "and pass its run directory to <code>mllm-arb report</code>.</p>"
    )



def footer(paths: Sequence[Path]) -> str:
    from importlib import metadata

    try:
        version = metadata.version("mllm-arb")
    except metadata.PackageNotFoundError:
        version = "?"
    when = datetime.now().isoformat(timespec="seconds")
    return (f"Written by mllm-arb {esc(version)} on {esc(when)} from {len(paths)} run director{'y' if len(paths) == 1 else 'ies'}. "
            "This page is self-contained: it loads nothing from the network.")


def write_page(target: Path, data: str | bytes) -> Path:
    """Write atomically, readable like any file the user writes (not the temporary file's 0600)."""
    atomic_write_bytes(target, data.encode() if isinstance(data, str) else data)
    umask = os.umask(0)
    os.umask(umask)
    target.chmod(0o666 & ~umask)
    return target


