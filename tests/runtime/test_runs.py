import json

from omegaconf import OmegaConf

from mllm_arb.core.files import atomic_write_bytes
from mllm_arb.runtime.runs import RunDir


def test_run_directories_never_overwrite_and_carry_provenance(tmp_path):
    cfg = OmegaConf.create({"seed": 3, "model": {"name": "m", "device": "cpu"}})
    a = RunDir.create(tmp_path, "evaluate", "tiny:llava", cfg)
    b = RunDir.create(tmp_path, "evaluate", "tiny:llava", cfg)
    assert a.path != b.path and a.path.parent == b.path.parent
    assert a.path.parent.name == "tiny_llava"
    manifest = json.loads((a.path / "manifest.json").read_text())
    for key in ("git_sha", "versions", "seed", "device", "timings_s", "config_hash"):
        assert key in manifest
    assert manifest["seed"] == 3 and "torch" in manifest["versions"]
    assert OmegaConf.load(a.path / "config.yaml") == cfg
    with a.timed("stage"):
        pass
    assert "stage" in json.loads((a.path / "manifest.json").read_text())["timings_s"]


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_bytes(target, b"old")

    try:
        atomic_write_bytes(target, None)  # type: ignore[arg-type]  # fails inside the write
    except TypeError:
        pass
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_tables_roundtrip(tmp_path):
    import pyarrow.parquet as pq

    run = RunDir.create(tmp_path, "x", "m", OmegaConf.create({"seed": 0}))
    run.write_table("rows.parquet", [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}])
    assert pq.read_table(run.file("rows.parquet")).to_pylist()[1] == {"a": 2, "b": "y"}
