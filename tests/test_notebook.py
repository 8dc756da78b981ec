"""docs/quickstart.ipynb runs, offline, on the shipped organism, and what it prints holds: the lens's last
column equals the logits and the contributions sum to the log-odds."""

import re
from pathlib import Path

import pytest

from mllm_arb.core.paths import CHECKPOINT_DIR

from .notebook import run_notebook

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (CHECKPOINT_DIR / "config.json").exists(), reason="the organism's checkpoint is not in this checkout")
def test_the_quickstart_notebook_runs():
    _, outputs, _ = run_notebook(ROOT / "docs" / "quickstart.ipynb")
    text = "".join(outputs)
    assert "LlavaAdapter 8 layers, 8 heads each" in text
    assert "last column equals the logits: True" in text and "contributions sum to the log-odds: True" in text
    mfr = {m.group(1): float(m.group(2)) for m in re.finditer(r"(text|vision) following: MFR ([\d.]+)", text)}
    assert mfr["text"] == 1.0 and 0.5 < mfr["vision"] < 1.0
    # the head that carries following on the organism comes out first, as the report's exact ranking finds it
    assert re.search(r"^L0H3: zeroing it", text, re.M)
