"""Sharded execution: a 2-process torchrun (gloo, CPU) writes one run whose tables and results equal a
single-process run's; the ranks split the batches between them (evaluate, rank-heads and ablate,
whose head ranking and blocking sweep both shard). (`analyze` is run sharded in
tests/runtime/test_resume.py, resuming a killed run over two processes.)"""

import json
import sys

import pyarrow.parquet as pq
import pytest
import torch

from mllm_arb.core.errors import UserError
from mllm_arb.runtime.ranks import Ranks

from ..conftest import invoke, one_thread_invoke, only_run, torchrun, unit_ranks

TABLES = {"evaluate": ["samples.parquet"], "rank-heads": ["scores.parquet"],
          "ablate": ["samples.parquet", "scores.parquet"]}  # ablate ranks its heads itself, then blocks them
# one set of overrides serves every command (each reads only its own keys)
ARGS = ["model=llava_tiny", "batch_size=2", "data.n_items=8", "scoring.generate_tokens=1", "keep_partial=true",
        "sweep.methods=[attribution,dla]", "sweep.ablation=mean", "sweep.n_random=2", "sweep.n_random_dose=2",
        "sweep.ks=[0.25]", "sweep.controls=[image_only]", "scoring.n_boot=50"]
# every command in one torchrun launch, to pay the start-up once
DRIVER = """
import sys
from mllm_arb.cli import app
for command in sys.argv[1].split(","):
    code = app([command, *sys.argv[2:]], standalone_mode=False)  # an error's exit code comes back here
    if code:
        sys.exit(code)
"""


def test_two_process_runs_equal_one_process_runs(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    two = torchrun(",".join(TABLES), *ARGS, f"output_dir={tmp_path / 'two'}", script=driver)
    assert two.returncode == 0, two.stderr[-3000:]
    for command, tables in TABLES.items():
        assert one_thread_invoke(command, *ARGS, f"output_dir={tmp_path / 'one'}").exit_code == 0
        run2, run1 = only_run(tmp_path / "two", command), only_run(tmp_path / "one", command)  # one run dir for both ranks
        for table in tables:
            rows2, rows1 = pq.read_table(run2 / table).to_pylist(), pq.read_table(run1 / table).to_pylist()
            assert len(rows1) > 0 and rows2 == rows1, table
        for name in ("results.json", "heads.json"):
            if (run1 / name).exists():
                assert json.loads((run2 / name).read_text()) == json.loads((run1 / name).read_text()), name
        assert json.loads((run2 / "manifest.json").read_text())["world_size"] == 2
        # batches alternate between the ranks: rank r computed every batch whose index ≡ r (mod 2)
        owners = unit_ranks(run2)
        assert set(owners.values()) == {0, 1}
        assert all(rank == int(key.split("/")[1]) % 2 for key, rank in owners.items())
    assert len(list((tmp_path / "two" / "evaluate").glob("*/*/samples.parquet"))) == 1


def test_rank_devices_and_ownership(monkeypatch):
    assert Ranks(1, 2, 1).device("cuda") == "cuda:1" and Ranks(0, 2, 0).device("cpu") == "cpu"
    assert Ranks().device("auto") == "auto"  # one process may spread a model over the GPUs
    assert Ranks(1, 2, 1).device("auto") == ("cuda:1" if torch.cuda.is_available() else "cpu")  # a rank keeps to its own
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="WORLD_SIZE"):
        Ranks.from_env()
    assert [i for i in range(7) if Ranks(1, 3, 1).owns(i)] == [1, 4]


def test_commands_without_sharding_refuse_a_torchrun_launch(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = invoke("build-data", "model=llava_tiny", f"output_dir={tmp_path}")
    assert result.exit_code == 2 and "does not run sharded" in result.output
    assert not any(tmp_path.iterdir())
