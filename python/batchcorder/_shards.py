"""``worker_shard()``: which shard of a cache this training process or DataLoader worker
reads, from PyTorch when the program uses it and from torchrun's environment otherwise.

torch is never imported here: only modules the program already imported are asked
(``sys.modules``), so the helper costs nothing and works without torch installed.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Optional

__all__ = ["worker_shard"]


def worker_shard(environ: Optional[Mapping[str, str]] = None) -> tuple[int, int]:
    """``(index, count)`` for ``cache.reader(shard=...)``: this process's share of a
    cache among every data-parallel rank and every DataLoader worker.

    The rank and world size come from ``torch.distributed`` when the program imported it
    and initialized a process group; otherwise from torchrun's ``RANK`` and
    ``WORLD_SIZE`` environment variables; otherwise rank 0 of 1. Inside a DataLoader
    worker (``torch.utils.data.get_worker_info()``, when the program imported
    ``torch.utils.data``), each rank's share is split again among its workers: shard
    ``rank * num_workers + worker_id`` of ``world_size * num_workers``.

    ``environ`` defaults to ``os.environ``.

    >>> worker_shard({})
    (0, 1)
    >>> worker_shard({"RANK": "3", "WORLD_SIZE": "4"})
    (3, 4)
    """
    rank, world = _rank_and_world(os.environ if environ is None else environ)
    worker, workers = _dataloader_worker()
    return rank * workers + worker, world * workers


def _rank_and_world(environ: Mapping[str, str]) -> tuple[int, int]:
    distributed = sys.modules.get("torch.distributed")
    if (
        distributed is not None
        and distributed.is_available()
        and distributed.is_initialized()
    ):
        return int(distributed.get_rank()), int(distributed.get_world_size())
    if "WORLD_SIZE" not in environ and "RANK" not in environ:
        return 0, 1
    world = _env_int(environ, "WORLD_SIZE")
    rank = _env_int(environ, "RANK")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"the environment has RANK={environ.get('RANK')!r} and "
            f"WORLD_SIZE={environ.get('WORLD_SIZE')!r}: RANK must be from 0 to WORLD_SIZE - 1; "
            "fix the launcher's variables or unset them"
        )
    return rank, world


def _env_int(environ: Mapping[str, str], name: str) -> int:
    text = environ.get(name)
    if text is None:
        raise ValueError(
            f"the environment sets {'RANK' if name == 'WORLD_SIZE' else 'WORLD_SIZE'} but not "
            f"{name}; torchrun sets both: set {name} too, or neither"
        )
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"the environment variable {name}={text!r} is not an integer") from None


def _dataloader_worker() -> tuple[int, int]:
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    if info is None:
        return 0, 1
    return int(info.id), int(info.num_workers)
