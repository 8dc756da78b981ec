"""A fingerprint of a checkpoint's files, so that a resumed run can tell that its model was replaced.

Saved batches were computed with the weights (and processor files) the run started with; a checkpoint
retrained or edited in place at the same path must not be mixed into them. The fingerprint covers the
files loading reads (weights, configs, tokenizer and processor files; not model cards, licences or
training logs) by their names and whole contents, not their times, so a copy of the same checkpoint on
another machine matches. Hashing a 7B checkpoint takes seconds, so each file's hash is remembered under
its path, size and modification time (`MLLM_ARB_CACHE`/fingerprints.json): only a file written since is
read again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..core.errors import UserError

#: weights: safetensors when there are any (what `from_pretrained` prefers), else the PyTorch files
WEIGHTS = (("*.safetensors", "*.safetensors.index.json"), ("*.bin", "*.bin.index.json", "*.pt", "*.pth"))
#: everything else loading a model and its processor reads
READ_BY_LOADING = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                   "video_preprocessor_config.json", "image_processor_config.json", "chat_template.json",
                   "chat_template.jinja", "tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "*.model", "*.tiktoken")  # fmt: skip


def _cache_file() -> Path:
    return Path(os.environ.get("MLLM_ARB_CACHE", Path.home() / ".cache" / "mllm_arb")) / "fingerprints.json"


def _read_cache() -> dict[str, str]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict[str, str]) -> None:
    """Atomically (a temporary file, then a rename); a cache that cannot be written is only slower."""
    target = _cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=target.parent, delete=False, suffix=".tmp") as f:
            json.dump(cache, f)
        os.replace(f.name, target)
    except OSError:
        pass


def _file_digest(path: Path, cache: dict[str, str]) -> str:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in cache:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        cache[key] = digest.hexdigest()
    return cache[key]


def model_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder that loading the model and its processor reads."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())

    def matching(patterns) -> list[str]:
        return [n for n in names if any(fnmatch.fnmatch(n, pattern) for pattern in patterns)]

    weights = matching(WEIGHTS[0]) or matching(WEIGHTS[1])
    return [folder / n for n in sorted(set(weights) | set(matching(READ_BY_LOADING)))]


def checkpoint_dir(path) -> Path | None:
    """The local folder `from_pretrained` reads for a model reference (a hub id: its cached snapshot),
    or None when there is none to read."""
    from .loading import materialise

    source = Path(materialise(path))
    if source.is_dir():
        return source
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: loading the model says so clearly
        return None


def weights_fingerprint(path) -> str | None:
    """16 hex digits over the names and contents of the files loading reads from a model's folder; None
    when the model has no local folder."""
    folder = checkpoint_dir(path)
    if folder is None:
        return None
    cache = _read_cache()
    before = dict(cache)
    digest = hashlib.sha256()
    for file in model_files(folder):
        try:
            digest.update(f"{file.name}\0{_file_digest(file, cache)}\0".encode())
        except OSError as exc:
            raise UserError(f"cannot read model file {file} ({exc.strerror or type(exc).__name__})") from None
    if cache != before:
        _write_cache(cache)
    return digest.hexdigest()[:16]
