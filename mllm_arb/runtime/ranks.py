"""Sharded execution under `torchrun` / `accelerate launch`: who this process is, and the few collective
steps the stages need (agree on one run directory, wait for every shard, let one rank go first).

Rank and world size come from the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK). Without them
the process is rank 0 of 1 and nothing here touches torch.distributed. With them, a gloo process group
carries the (tiny) messages: gloo runs on CPU, so the same code serves CPU tests and GPU nodes; the model
of each rank sits on `cuda:LOCAL_RANK`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from ..core.errors import UserError

T = TypeVar("T")

#: how long a rank waits for the others at a barrier (shards of a long stage finish at different times)
TIMEOUT_ENV = "MLLM_ARB_DIST_TIMEOUT_MIN"


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        def read(name: str, default: int) -> int:
            value = os.environ.get(name)
            try:
                return int(value) if value not in (None, "") else default
            except ValueError:
                raise UserError(f"{name}={value!r} is not an integer") from None

        ranks = cls(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0))
        if ranks.world < 1 or not 0 <= ranks.rank < ranks.world:
            raise UserError(f"RANK={ranks.rank} does not lie in [0, WORLD_SIZE={ranks.world})")
        return ranks

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def owns(self, index: int) -> bool:
        """Work unit `index` (a batch) belongs to this rank: round robin, so shards stay balanced."""
        return index % self.world == self.rank

    def device(self, configured: str) -> str:
        """Each rank's model on its own GPU, `cuda:LOCAL_RANK`. `auto` (device_map="auto": one model over
        every visible GPU) becomes that GPU too under torchrun, or the CPU on a machine without CUDA."""
        if not self.sharded:
            return configured
        if configured == "auto":
            import torch

            return f"cuda:{self.local}" if torch.cuda.is_available() else "cpu"
        if configured.split(":")[0] == "cuda":
            return f"cuda:{self.local}"
        return configured

    # ------------------------------------------------------------------ collectives (no-ops alone)
    def barrier(self) -> None:
        if self.sharded:
            import torch.distributed as dist

            dist.barrier()

    def share(self, make: Callable[[], T]) -> T:
        """Rank 0 computes a value (e.g. creates the run directory) and every rank receives it. A UserError
        on rank 0 is raised on every rank, so all of them stop with the same message."""
        if not self.sharded:
            return make()
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = ("ok", make())
            except UserError as exc:
                box[0] = ("error", str(exc))
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "error":
            raise UserError(value)
        return value

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds a tiny model into the cache, downloads), then the rest."""
        if self.sharded and not self.main:
            self.barrier()
        yield
        if self.sharded and self.main:
            self.barrier()


@contextmanager
def session() -> Iterator[Ranks]:
    """This process's ranks; when launched by torchrun, with a gloo process group. The group is set up
    once per process and kept for the commands that follow (torn down at exit): tearing it down and
    setting it up again races with ranks still finishing the previous command."""
    ranks = Ranks.from_env()
    if ranks.sharded:
        _init_group(ranks)
    yield ranks


def _init_group(ranks: Ranks) -> None:
    import atexit

    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise UserError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are unset: launch with torchrun or accelerate launch")
    minutes = float(os.environ.get(TIMEOUT_ENV, 24 * 60))
    dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world, timeout=timedelta(minutes=minutes))
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
