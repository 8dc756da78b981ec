"""Run a notebook's code cells in order, in one namespace, without Jupyter: what the notebook test does,
and, with `--write`, how docs/quickstart.ipynb's stored outputs are refreshed
(`python -m tests.notebook docs/quickstart.ipynb --write`)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path


def run_notebook(path: str | Path) -> tuple[dict, list[str], float]:
    """(the notebook with each code cell's printed output stored, the outputs, seconds). A failing cell
    raises, naming the cell."""
    nb = json.loads(Path(path).read_text())
    namespace: dict = {"__name__": "__main__"}
    outputs, count = [], 0
    t0 = time.monotonic()
    for k, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        count += 1
        buf = io.StringIO()
        source = "".join(cell["source"])
        try:
            with contextlib.redirect_stdout(buf):
                exec(compile(source, f"{path} cell {k}", "exec"), namespace)
        except Exception as exc:
            raise RuntimeError(f"{path}: code cell {count} failed: {type(exc).__name__}: {exc}") from exc
        text = buf.getvalue()
        outputs.append(text)
        cell["execution_count"] = count
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": text.splitlines(keepends=True)}] if text else []
    return nb, outputs, time.monotonic() - t0


if __name__ == "__main__":
    nb, _, seconds = run_notebook(sys.argv[1])
    if "--write" in sys.argv:
        Path(sys.argv[1]).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(f"{sys.argv[1]}: every cell ran in {seconds:.1f} s")
