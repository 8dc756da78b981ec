"""The seed replicates of the natural organism (docs/seeds.md) are reproducible from their configs:
retraining one gives the very weights the documented study was run on. Slow (about 15 minutes on 2
cores): `pytest -m slow tests/organism/test_seeds.py`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

EXPECTED = Path(__file__).resolve().parents[2] / "docs" / "seeds" / "weights.json"


def weights_digest(folder: Path) -> str:
    """sha256 over every tensor's name and bytes, in name order (independent of the file's metadata)."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def test_every_replicate_config_has_documented_weights():
    from mllm_arb.core.paths import conf_dir

    expected = json.loads(EXPECTED.read_text())
    configs = sorted(p.stem for p in (conf_dir() / "organism").glob("seed*.yaml"))
    assert configs and configs == sorted(expected)


@pytest.mark.slow
def test_retraining_seed_1_reproduces_its_weights(tmp_path):
    from mllm_arb.organism.__main__ import organism_config
    from mllm_arb.organism.train import train

    cfg = organism_config("seed1", [f"output_dir={tmp_path / 'seed1'}", "progress=false"])
    assert weights_digest(train(cfg)) == json.loads(EXPECTED.read_text())["seed1"]
