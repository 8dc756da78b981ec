"""A fingerprint of a checkpoint's files, so that a resumed run can tell that its model was replaced.

Saved batches were computed with the weights (and processor files) the run started with; a checkpoint
retrained or edited in place at the same path must not be mixed into them. The fingerprint reads what
the files hold, not their times, so a copy of the same checkpoint on another machine matches: small
files whole, large ones (weight shards) at `SAMPLES` evenly spaced blocks plus their size, which a
retrained or partly edited shard fails with near certainty at a few MB read per shard.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: blocks read from a file too large to read whole, and their size
SAMPLES, BLOCK = 256, 1 << 16


def _file_digest(path: Path) -> bytes:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= SAMPLES * BLOCK:
            digest.update(f.read())
        else:
            for k in range(SAMPLES):
                f.seek(k * (size - BLOCK) // (SAMPLES - 1))
                digest.update(f.read(BLOCK))
    return digest.digest()


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
    except Exception:  # noqa: BLE001 - not cached: loading the model will say so clearly
        return None


def weights_fingerprint(path) -> str | None:
    """16 hex digits over the names and contents of a checkpoint folder's files (not its model card or
    hidden files); None when the model has no local folder."""
    folder = checkpoint_dir(path)
    if folder is None:
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".md"):
        digest.update(file.name.encode() + b"\0")
        digest.update(_file_digest(file))
    return digest.hexdigest()[:16]
