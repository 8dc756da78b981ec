"""Look at a report in a real browser: headless Chromium driven over the DevTools protocol.

Chromium is started with `--remote-debugging-pipe`, so the protocol runs over two pipes (file
descriptors 3 and 4, NUL-separated JSON): no port, no websocket client, no network. The page is
opened from a `file://` URL with every host unresolvable; we collect console errors, uncaught
exceptions and any request that is not a `data:`/`file:` URL, measure every figure, check that the
page fits a phone's width and that the dark scheme applies, and take a screenshot.

Used by the tests (`tests/test_report.py`) and by `mllm-arb report --screenshot`.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: headless, no sandbox (root in containers), and nothing that phones home
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-pipe",
)

#: what the page is asked about once loaded: every figure's size and visibility, overflow, colours
PROBE = r"""
(() => {
  const visible = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.display === "none" || s.visibility === "hidden" || Number(s.opacity) === 0) return false;
    }
    return true;
  };
  const figures = Array.from(document.querySelectorAll("figure")).map((f) => {
    const img = f.querySelector("img, svg");
    const r = img ? img.getBoundingClientRect() : { width: 0, height: 0 };
    const cap = f.querySelector("figcaption");
    const pt = img ? Number(img.getAttribute("data-font-pt")) : 0, wpt = img ? Number(img.getAttribute("data-width-pt")) : 0;
    return {
      font_px: pt && wpt ? pt * r.width / wpt : null,
      name: f.getAttribute("data-figure") || f.id,
      width: r.width, height: r.height,
      loaded: !!img && (img.tagName.toLowerCase() !== "img" || (img.complete && img.naturalWidth > 0)),
      visible: !!img && visible(img),
      caption: cap ? cap.textContent.trim() : "",
    };
  });
  const doc = document.documentElement;
  return {
    title: document.title,
    figures,
    sections: Array.from(document.querySelectorAll("main > section")).map((s) => s.id),
    scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, scrollHeight: doc.scrollHeight,
    background: getComputedStyle(document.body).backgroundColor,
    sortable: document.querySelectorAll("table.sortable").length,
    blank_cells: Array.from(document.querySelectorAll("main td")).filter((td) => {
      const t = td.textContent.trim();
      return t === "" || t === "n/a" || t === "nan" || t === "NaN";
    }).map((td) => {
      const table = td.closest("table"), section = td.closest("section");
      const head = table && table.tHead ? table.tHead.rows[0].cells[td.cellIndex] : null;
      const row = td.parentElement.cells[0];
      return `${section ? section.id : "?"} / ${table && table.caption ? table.caption.textContent.trim().slice(0, 40) : "table"} / ` +
        `${row ? row.textContent.trim().slice(0, 30) : "?"} / ${head ? head.textContent.trim() : td.cellIndex}: "${td.textContent.trim()}"`;
    }),
    tables: Array.from(document.querySelectorAll(".table-wrap")).map((w) => ({
      overflows: w.scrollWidth > w.clientWidth + 1, scrolls: getComputedStyle(w).overflowX === "auto",
      cue: w.classList.contains("overflows") && getComputedStyle(w, "::after").content.includes("scroll"),
    })),
    external: Array.from(document.querySelectorAll("[src],[href]")).map((e) => e.getAttribute("src") || e.getAttribute("href"))
      .filter((u) => u && !u.startsWith("data:") && !u.startsWith("#")),
  };
})()
"""

#: find a sortable table with a numeric column whose values differ, press its header twice, read it back
SORT_PROBE = r"""
(() => {
  for (const table of document.querySelectorAll("table.sortable")) {
    const rows = Array.from(table.tBodies[0].rows);
    const heads = table.tHead.rows[0].cells;
    for (let col = 0; col < heads.length; col++) {
      const keys = rows.map((r) => r.cells[col] && r.cells[col].getAttribute("data-sort"));
      if (keys.some((k) => k === null || k === "" || isNaN(Number(k))) || new Set(keys).size < 2) continue;
      const read = () => Array.from(table.tBodies[0].rows).map((r) => Number(r.cells[col].getAttribute("data-sort")));
      const button = heads[col].querySelector("button");
      const before = read();
      button.click();
      const up = read(), upState = heads[col].getAttribute("aria-sort");
      button.click();
      const down = read(), downState = heads[col].getAttribute("aria-sort");
      return { column: heads[col].textContent.trim(), before, up, down, upState, downState };
    }
  }
  return null;
})()
"""


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """The Chromium binary: `$MLLM_ARB_CHROMIUM`, else the first of the usual names on PATH."""
    env = os.environ.get("MLLM_ARB_CHROMIUM")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What the browser saw."""

    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # non-data:, non-file: URLs the page asked for
    desktop: dict = field(default_factory=dict)  # PROBE at laptop width
    phone: dict = field(default_factory=dict)  # PROBE at phone width
    dark_background: str = ""
    light_background: str = ""
    sort: dict | None = None
    screenshot: bytes = b""
    seconds: float = 0.0


class Chromium:
    """A headless Chromium spoken to over `--remote-debugging-pipe`; use as a context manager."""

    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 2000, timeout: float = 30.0) -> None:
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError("Chromium not found (install Debian's `chromium` package, or set MLLM_ARB_CHROMIUM)")
        self.width, self.height, self.timeout = width, height, timeout
        self._id = 0
        self._buf = b""
        self.events: list[dict] = []

    def __enter__(self) -> Chromium:
        self._profile = tempfile.mkdtemp(prefix="mllm-arb-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # the child's ends must become fds 3 and 4; move them out of the way first so dup2 cannot clobber
        hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def child_fds() -> None:  # runs in the child, before exec: dup2'd fds stay open across exec
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        # close_fds=False: closing would drop 3 and 4 after child_fds; Python's own fds are close-on-exec anyway

        args = [self.binary, *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={self.width},{self.height}", "about:blank"]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     preexec_fn=child_fds, close_fds=False)
        os.close(hi_r)
        os.close(hi_w)
        try:
            targets = self.call("Target.getTargets")["targetInfos"]
            page = next((t for t in targets if t["type"] == "page"), None)
            target_id = page["targetId"] if page else self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target_id, flatten=True)["sessionId"]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close")
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    # -- the protocol
    def send(self, method: str, session: str | None = None, **params: Any) -> int:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self._to_child, data)
            data = data[n:]
        return self._id

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                self._stderr.seek(0)
                tail = self._stderr.read()[-2000:].decode("utf-8", "replace")
                raise BrowserError(f"Chromium exited (code {self.proc.poll()}): {tail}")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        """Send a command and wait for its answer; events met on the way are kept in `events`."""
        want = self.send(method, session, **params)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def page(self, method: str, **params: Any) -> dict:
        return self.call(method, self.session, **params)

    def wait_for(self, event: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        for k, msg in enumerate(self.events):
            if msg.get("method") == event:
                return self.events.pop(k)
        while True:
            msg = self._read(deadline)
            if msg.get("method") == event:
                return msg
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression: str) -> Any:
        res = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"page script failed: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def set_width(self, width: int, height: int, mobile: bool = False) -> None:
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)


def console_errors(events: list[dict]) -> tuple[list[str], list[str]]:
    """(console errors and uncaught exceptions, URLs requested that are neither data: nor file:)."""
    errors, requests = [], []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            errors.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())
        elif m == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if not url.startswith(("data:", "file:", "about:")):
                requests.append(url)
    return errors, requests


def check_page(path: Path, width: int = 1280, height: int = 2000, phone_width: int = 390, full_page: bool = False,
               binary: str | None = None) -> PageCheck:
    """Open a local HTML file in headless Chromium and report what a reader would meet."""
    t0 = time.monotonic()
    out = PageCheck()
    with Chromium(binary, width, height) as b:
        for domain in ("Runtime", "Log", "Page", "Network"):
            b.page(f"{domain}.enable")
        b.set_width(width, height)
        b.page("Page.navigate", url=Path(path).resolve().as_uri())
        b.wait_for("Page.loadEventFired")
        out.desktop = b.evaluate(PROBE)
        out.light_background = out.desktop.get("background", "")
        clip = None
        if full_page:
            clip = {"x": 0, "y": 0, "width": width, "height": int(out.desktop["scrollHeight"]), "scale": 1}
        shot = b.page("Page.captureScreenshot", format="png", captureBeyondViewport=full_page, **({"clip": clip} if clip else {}))
        out.screenshot = base64.b64decode(shot["data"])
        out.sort = b.evaluate(SORT_PROBE)
        b.page("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}])
        out.dark_background = b.evaluate("getComputedStyle(document.body).backgroundColor")
        b.page("Emulation.setEmulatedMedia", features=[])
        b.set_width(phone_width, 844, mobile=True)
        b.evaluate("new Promise((r) => requestAnimationFrame(() => setTimeout(r, 50)))")  # the page's resize handlers run
        out.phone = b.evaluate(PROBE)
        b.evaluate("new Promise((r) => setTimeout(r, 50))")  # let late console messages arrive
        out.console_errors, out.requests = console_errors(b.events)
    out.seconds = time.monotonic() - t0
    return out


def screenshot_report(path: Path, target: Path | None = None, width: int = 1280, height: int = 2000) -> tuple[Path, PageCheck]:
    """Check a report in the browser and save the whole page (laptop width) as a PNG beside it."""
    from .html import write_page

    path = Path(path)
    check = check_page(path, width, height, full_page=True)
    return write_page(Path(target) if target else path.with_suffix(".png"), check.screenshot), check
