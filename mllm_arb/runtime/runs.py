"""Run directories: one versioned folder per command invocation, with the composed config, a manifest
(provenance and timings) and results written atomically. An existing run is never overwritten."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..core.errors import UserError
from ..core.files import atomic_write_bytes, file_mode, to_jsonable
from .allocator import allocator_state

#: what write_manifest computes itself (everything else in a manifest came from `extra`)
MANIFEST_KEYS = ("command", "created", "git_sha", "config_hash", "seed", "versions", "python", "host", "device", "cuda", "timings_s")
PACKAGES = ("mllm-arb", "torch", "transformers", "tokenizers", "datasets", "hydra-core", "numpy", "pillow")


def config_hash(cfg: DictConfig) -> str:
    text = OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


#: the resumable stage runs this process opened for writing, in order, as (command, folder): what an
#: interrupted command names for `--resume` (the CLI clears it when a command starts)
OPENED: list[tuple[str, Path]] = []
#: the run folders this process holds locked (open lock files), by folder
_LOCKS: dict[Path, Any] = {}
LOCK_NAME = ".lock"


def lock_run(path: Path) -> None:
    """Hold `path` for this process: a second process on the same run folder (two `--resume`s, a resume
    while the run still runs) is refused at once instead of computing every batch twice. The lock is an
    advisory `flock` on `.lock`; the kernel drops it when the process ends, however it ends."""
    path = Path(path).resolve()
    if path in _LOCKS:
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock on this platform: no lock
        return
    fh = open(path / LOCK_NAME, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise UserError(f"run folder {path} is in use by another mllm-arb process (pid {holder}); wait for it to end "
                        "or stop it, then resume") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    _LOCKS[path] = fh


def unlock_run(path: Path | None = None) -> None:
    """Release one run folder (None: every folder this process holds)."""
    for p in [Path(path).resolve()] if path is not None else list(_LOCKS):
        fh = _LOCKS.pop(p, None)
        if fh is not None:
            fh.close()  # closing the descriptor drops the flock


class RunDir:
    """`outputs/<command>/<model>/<YYYY-MM-DD_HH-MM-SS>-<config hash>/`."""

    def __init__(self, path: Path, cfg: DictConfig, writer: bool = True) -> None:
        self.path = path
        self.cfg = cfg
        self.started = time.time()
        self.timings: dict[str, float] = {}
        self.extra: dict[str, Any] = {}
        self.writer = writer  # False on the other ranks of a sharded run: only rank 0 writes the manifest
        self.saved_at_start: dict[str, int] = {}  # per stage, batches in partial/ when this session began
        self.command = path.parent.parent.name  # outputs/<command>/<model>/<run>; a reopened run keeps its manifest's

    @classmethod
    def create(cls, root: str | Path, command: str, model_name: str, cfg: DictConfig) -> RunDir:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        base = Path(root) / command / safe_name(model_name)
        base.mkdir(parents=True, exist_ok=True)
        name, n = f"{stamp}-{config_hash(cfg)}", 1
        while True:
            path = base / name
            try:
                path.mkdir()  # atomic: two runs started in the same second get different folders
                break
            except FileExistsError:
                n += 1
                name = f"{stamp}-{config_hash(cfg)}-{n}"
        run = cls(path, cfg)
        atomic_write_bytes(path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
        run.write_manifest()
        return run

    @classmethod
    def open(cls, path: str | Path, cfg: DictConfig, writer: bool = True) -> RunDir:
        """An existing run directory (to resume it, or as a non-writing rank of a sharded run): its
        manifest's entries and timings are kept, and later writes add to them."""
        run = cls(Path(path), cfg, writer)
        manifest_file = run.file("manifest.json")
        if manifest_file.is_file():
            manifest = json.loads(manifest_file.read_text())
            run.timings = dict(manifest.get("timings_s", {}))
            run.command = manifest.get("command", run.command)
            run.extra = {k: v for k, v in manifest.items() if k not in MANIFEST_KEYS}
            try:
                run.started = datetime.fromisoformat(manifest["created"]).timestamp()
            except (KeyError, ValueError):
                pass
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        target = self.file(name)
        atomic_write_bytes(target, json.dumps(to_jsonable(obj), indent=2, sort_keys=False).encode())
        return target

    def write_table(self, name: str, rows: list[dict]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        target = self.file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.fchmod(fd, file_mode())
        os.close(fd)
        try:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def log(self, message: str) -> None:
        with open(self.file("log.txt"), "a") as fh:
            fh.write(f"{datetime.now().isoformat(timespec='seconds')} {message}\n")

    @contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = round(time.perf_counter() - t0, 3)
            self.write_manifest()

    def write_manifest(self, **extra: Any) -> None:
        self.extra.update(extra)
        if not self.writer:
            return
        import torch

        manifest = {
            "command": self.command,
            "created": datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            "git_sha": git_sha(),
            "config_hash": config_hash(self.cfg),
            "seed": self.cfg.get("seed"),
            "versions": package_versions(),
            "python": platform.python_version(),
            "host": platform.node(),
            "device": str(self.cfg.model.get("device", "cpu")) if "model" in self.cfg else "cpu",
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "allocator": allocator_state(),
            "timings_s": self.timings,
            **self.extra,
        }
        self.write_json("manifest.json", manifest)
