"""Run folders: one process at a time, files readable as the umask says, and an interrupted command
names the folder and the command that continues it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from mllm_arb.core.errors import UserError
from mllm_arb.core.files import atomic_write_bytes
from mllm_arb.runtime.runs import lock_run, unlock_run

from ..conftest import invoke, only_run


def test_files_follow_the_umask(tmp_path):
    from mllm_arb.runtime.runs import RunDir
    from mllm_arb.runtime.config import resolved

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        run = RunDir.create(tmp_path / "out", "evaluate", "m", resolved([]))
        run.write_table("t.parquet", [{"x": 1}])
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.json", b"{}")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == 0o644
    assert mode(run.path / "t.parquet") == mode(run.path / "manifest.json") == 0o644
    assert mode(tmp_path / "private.json") == 0o600


LOCK = "import sys\nfrom mllm_arb.runtime.runs import lock_run\ntry:\n    lock_run(sys.argv[1])\nexcept Exception as e:\n    print(e)\n    sys.exit(3)\n"


def test_a_second_process_on_a_run_folder_is_refused(tmp_path):
    lock_run(tmp_path)
    try:
        lock_run(tmp_path)  # the same process again: it already holds it
        other = subprocess.run([sys.executable, "-c", LOCK, str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert other.returncode == 3, other.stderr
        assert "in use by another mllm-arb process" in other.stdout and f"pid {os.getpid()}" in other.stdout
    finally:
        unlock_run(tmp_path)
    free = subprocess.run([sys.executable, "-c", LOCK, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert free.returncode == 0, free.stdout + free.stderr


def test_an_interrupted_stage_names_its_folder_and_resumes(tmp_path, monkeypatch):
    import mllm_arb.runtime.stage as stage

    out = tmp_path / "out"
    args = ("evaluate", "model=llava_tiny", "data.n_items=4", "batch_size=4", f"output_dir={out}")
    real = stage.record_batches

    def interrupt(run, store):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "record_batches", interrupt)
    result = invoke(*args)
    assert result.exit_code == 130, result.output
    run = only_run(out, "evaluate")
    assert "interrupted" in result.output and f"mllm-arb evaluate --resume {run}" in " ".join(result.output.split())
    assert not (run / "results.json").exists()
    report = invoke("report", str(run))  # an unfinished run is not reported as if it had run
    assert report.exit_code == 2 and "unfinished evaluate run" in report.output, report.output
    monkeypatch.setattr(stage, "record_batches", real)
    result = invoke("evaluate", "--resume", str(run))  # the folder is free again: the command is over
    assert result.exit_code == 0, result.output
    assert json.loads((run / "results.json").read_text())["mfr"]


def test_a_full_disk_is_one_line_with_the_folder_to_resume(tmp_path, monkeypatch):
    import errno

    import mllm_arb.runtime.units as units

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(units, "atomic_write_bytes", full)
    out = tmp_path / "out"
    result = invoke("evaluate", "model=llava_tiny", "data.n_items=4", f"output_dir={out}")
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.output and "--resume" in result.output


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path):
    afile = tmp_path / "taken"
    afile.write_text("not a folder")
    result = invoke("evaluate", "model=llava_tiny", "data.n_items=2", f"output_dir={afile}")
    assert result.exit_code == 2 and "Not a directory" in result.output, result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1


def test_a_fault_mid_run_keeps_its_traceback_and_names_the_folder(tmp_path, monkeypatch):
    import mllm_arb.runtime.stage as stage
    from typer.testing import CliRunner

    from mllm_arb.cli import app

    def bug(run, store):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(stage, "record_batches", bug)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["evaluate", "model=llava_tiny", "data.n_items=2", f"output_dir={out}"])
    assert isinstance(result.exception, RuntimeError)  # a fault is not dressed up as a user error
    assert "--resume" in result.output and str(only_run(out, "evaluate")) in " ".join(result.output.split())


def test_progress_reaches_a_log_when_stderr_is_not_a_terminal():
    """SLURM, nohup, CI: dated lines at the start, every few seconds, and at the end of each task."""
    import io
    import time as clock

    from mllm_arb.runtime.progress import LogProgress

    out = io.StringIO()
    with LogProgress(stream=out, every=0.05) as bar:
        task = bar.add_task("knockout", total=4)
        bar.advance(task, 1)
        clock.sleep(0.06)
        bar.advance(task, 1)  # a periodic line: done/total, share, elapsed, time left
        bar.advance(task, 2)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("start: knockout (4 steps)")
    assert any("knockout: 2/4 (50%)" in ln and "left" in ln for ln in lines)
    assert lines[-1].split("] ", 1)[1].startswith("done: knockout in")
    assert len(lines) == 3


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf"])
def test_a_bad_log_interval_is_one_line_before_any_folder(tmp_path, monkeypatch, value):
    monkeypatch.setenv("MLLM_ARB_LOG_EVERY", value)
    result = invoke("evaluate", "model=llava_tiny", "data.n_items=2", f"output_dir={tmp_path / 'out'}")
    assert result.exit_code == 2 and "MLLM_ARB_LOG_EVERY" in result.output and not (tmp_path / "out").exists()
