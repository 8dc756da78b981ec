"""The built wheel carries what an installed `mllm-arb` needs: the configuration (conf/ of the repository,
as mllm_arb/conf/) and both organisms, so that commands compose their config from any folder."""

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building the wheel without network needs setuptools in this environment")
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (path,) = out.glob("mllm_arb-*.whl")
    return path


def test_the_wheel_carries_the_configuration_and_the_organisms(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert conf and all(f"mllm_arb/conf/{c}" in names for c in conf)
    for folder in ("checkpoint", "anchor"):
        for f in ("config.json", "model.safetensors", "MODEL_CARD.md"):
            assert f"mllm_arb/organism/{folder}/{f}" in names
    assert "mllm_arb/organism/anchor/ground_truth.json" in names
    for f in ("page.html.jinja", "report.css", "report.js"):  # the report page's shell
        assert f"mllm_arb/report/templates/{f}" in names


def test_an_installed_wheel_composes_its_config_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MLLM_ARB_CONF", None)
    probe = subprocess.run([sys.executable, "-c", "import mllm_arb.core.paths as p; print(p.conf_dir()); print(p.CHECKPOINT_DIR)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    conf, checkpoint = probe.stdout.split()
    assert Path(conf) == site / "mllm_arb" / "conf" and Path(checkpoint) == site / "mllm_arb" / "organism" / "checkpoint"
    shown = subprocess.run([sys.executable, "-m", "mllm_arb.cli", "analyze", "--cfg", "analysis.window=3"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "window: 3" in shown.stdout and "you must rely on the text context" in shown.stdout
    assert not any(elsewhere.iterdir())  # --cfg runs nothing
