"""worker_shard() and shard readers under real PyTorch: a DataLoader with two worker
processes, and a torch.distributed process group of two ranks (gloo). Run by
`make test-torch` (mk/torch.mk), which installs a CPU-only torch."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from batchcorder import StreamCache, worker_shard

BATCHES = 12


def save_of(folder: Path) -> Path:
    table = pa.table({"batch": [b for b in range(BATCHES) for _ in range(3)]})
    StreamCache(table.to_reader(max_chunksize=3)).persist(folder / "save")
    return folder / "save"


class Epoch(torch.utils.data.IterableDataset):
    """One epoch of a save: each DataLoader worker reads its shard of the seed's order."""

    def __init__(self, save: Path, seed: int) -> None:
        self.save, self.seed = str(save), seed

    def __iter__(self):
        shard = worker_shard()
        for batch in StreamCache.open(self.save).reader(shuffle=self.seed, shard=shard):
            yield shard, batch["batch"][0].as_py()


def test_dataloader_workers_read_disjoint_shards_of_one_order(tmp_path):
    save = save_of(tmp_path)
    whole = [b["batch"][0].as_py() for b in StreamCache.open(save).reader(shuffle=3)]
    loader = torch.utils.data.DataLoader(Epoch(save, 3), batch_size=None, num_workers=2)
    got = list(loader)
    shards = {tuple(int(x) for x in shard) for shard, _ in got}
    assert shards == {(0, 2), (1, 2)}, "each worker saw its own shard"
    for index in (0, 1):
        mine = [batch for shard, batch in got if tuple(int(x) for x in shard) == (index, 2)]
        assert mine == whole[index::2]
    assert sorted(batch for _, batch in got) == list(range(BATCHES))
    assert worker_shard() == (0, 1), "the main process is not a worker"


def _rank(rank: int, world: int, init: str, save: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        shard = worker_shard()
        batches = [b["batch"][0].as_py() for b in StreamCache.open(save).reader(shuffle=5, shard=shard)]
        Path(out, f"{rank}").write_text(f"{shard[0]} {shard[1]} " + " ".join(map(str, batches)))
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_read_disjoint_shards(tmp_path):
    save = save_of(tmp_path)
    for name in ("RANK", "WORLD_SIZE"):
        os.environ.pop(name, None)
    init = f"file://{tmp_path / 'rendezvous'}"
    tmp.spawn(_rank, args=(2, init, str(save), str(tmp_path)), nprocs=2, join=True)
    whole = [b["batch"][0].as_py() for b in StreamCache.open(save).reader(shuffle=5)]
    for rank in (0, 1):
        index, count, *batches = map(int, (tmp_path / str(rank)).read_text().split())
        assert (index, count) == (rank, 2)
        assert batches == whole[rank::2]
