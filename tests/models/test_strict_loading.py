"""Damaged checkpoints and impossible model settings are refused with one line, before any weights are
used: a missing tensor would otherwise be initialised at random and change every number."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from mllm_arb.core.errors import UserError
from mllm_arb.models.loading import load_adapter
from mllm_arb.models.tiny import save_tiny_model

from ..conftest import invoke


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "llava"
    save_tiny_model("llava", folder)
    return folder


def _copy(saved, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(saved, target)
    return target


def _drop_tensor(folder):
    weights = load_file(str(folder / "model.safetensors"))
    name = sorted(k for k in weights if "layers.0" in k and "q_proj.weight" in k)[0]
    del weights[name]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return name


def _truncate(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(folder):
    (folder / "model.safetensors").write_bytes(b"")


def _impossible_config(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 30  # weights saved at another width
    (folder / "config.json").write_text(json.dumps(cfg))


def _no_tokenizer(folder):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)


DAMAGE = {
    "missing tensor": (_drop_tensor, "lacks weights"),
    "truncated shard": (_truncate, "weights of model"),
    "empty shard": (_empty, "weights of model"),
    "config the weights do not fit": (_impossible_config, "model"),
    "no tokenizer files": (_no_tokenizer, "tokenizer or processor"),
}


def test_an_intact_copy_loads(saved, tmp_path):
    adapter = load_adapter(_copy(saved, tmp_path))
    assert adapter.parts.n_layers >= 1


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused(saved, tmp_path, case):
    damage, message = DAMAGE[case]
    folder = _copy(saved, tmp_path)
    detail = damage(folder)
    with pytest.raises(UserError, match=message) as err:
        load_adapter(folder)
    assert "\n" not in str(err.value)
    if detail:  # the missing tensor is named
        assert "q_proj" in str(err.value)


@pytest.mark.parametrize("over,message", [
    ("model.device=cuda:7", "model.device=cuda:7"),
    ("model.device=toaster", "not a device"),
    ("model.attn_implementation=fast", "model.attn_implementation='fast'"),
])
def test_impossible_model_settings_exit_2_before_a_run_folder(tmp_path, over, message):
    out = tmp_path / "out"
    result = invoke("evaluate", "model=llava_tiny", "data.n_items=4", over, f"output_dir={out}")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists() or not any(out.rglob("manifest.json"))


def test_a_damaged_checkpoint_exits_2_through_the_cli(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _drop_tensor(folder)
    out = tmp_path / "out"
    result = invoke("evaluate", "model=llava_tiny", f"model.path={folder}", "data.n_items=4", f"output_dir={out}")
    assert result.exit_code == 2 and "lacks weights" in result.output, result.output
    assert not out.exists() or not any(out.rglob("manifest.json"))
