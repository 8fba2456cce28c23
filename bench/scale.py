"""The disk tier at scale (issue 20, item 6): one pass over a large stream with
`memory_capacity` 256 MiB, `max_readers=2` and a disk tier, read by two threads kept
about one window (1 GiB) apart; against this machine's sequential write speed.

    python bench/scale.py [--quick] [--gib N] [--window-mib M] [--memory-mib M]
                          [--speed-gib N] [--out FILE]

The source is a generator of fresh 64 Ki-row batches (int64, float64, and a string
column copied from one template), so it holds no memory of its own. A leader and a follower thread read the cache; a condition
variable on the bytes each has read keeps the leader about `--window-mib` of stream
ahead. Each reader touches every page of every buffer it gets (what a consumer of the
data does, at the least). Measured in one run:

- peak disk use: a sampling thread sums the allocated size (st_blocks) of the files in
  the spill folder every 50 ms, plus unlinked segments that are still mapped;
- peak RSS growth: VmHWM (reset through /proc/self/clear_refs) minus VmRSS before;
- throughput: stream bytes (pyarrow's `nbytes` of each batch) over wall seconds, against
  the sequential write speed of the same file system (a file written in 64 MiB blocks,
  fsync'ed, timed to the end of the fsync), measured before and after the pass.

The spill folder and the speed-test file are deleted at the end, also on error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from workloads import proc_status_bytes, reset_peak_rss  # bench/ is the script's folder

HERE = Path(__file__).resolve().parent
MIB = 1 << 20
GIB = 1 << 30
ROWS = 1 << 16
SEGMENT_BYTES = 64 * MIB  # the disk tier's default (core/src/options.rs)


def write_speed(path: Path, size: int, sync: bool = True) -> float:
    """Bytes per second writing `size` bytes to `path` in 64 MiB blocks, fsync included
    (`sync`), or into the page cache only, the file deleted before it is written back."""
    block = np.random.default_rng(3).integers(0, 256, 64 * MIB, dtype=np.uint8).tobytes()
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // len(block)):
            os.write(fd, block)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    took = time.perf_counter() - started
    os.unlink(path)
    return size / took


def source(total: int) -> tuple[pa.Schema, object, int]:
    """A reader over fresh batches of about `total` bytes in all, and the batch count."""
    digits = np.char.mod("sku-%d", np.arange(ROWS) * 7919 % 10_000_019)
    template = pa.array(digits.tolist(), pa.string())
    _, offsets, data = template.buffers()
    offsets = np.frombuffer(offsets, dtype=np.uint8).copy()
    data = np.frombuffer(data, dtype=np.uint8).copy()
    schema = pa.schema([("id", pa.int64()), ("x", pa.float64()), ("s", pa.string())])
    per_batch = ROWS * 16 + offsets.nbytes + data.nbytes
    batches = max(1, total // per_batch)

    def produce():
        for b in range(batches):
            ids = np.arange(b * ROWS, (b + 1) * ROWS, dtype=np.int64)
            strings = pa.StringArray.from_buffers(
                ROWS, pa.py_buffer(offsets.copy()), pa.py_buffer(data.copy()))
            yield pa.record_batch([pa.array(ids), pa.array(ids * 0.5), strings], schema=schema)

    return schema, pa.RecordBatchReader.from_batches(schema, produce()), batches


def touch(batch: pa.RecordBatch) -> int:
    """Read one byte of every page of every buffer; returns their sum."""
    total = 0
    for column in batch.columns:
        for buffer in column.buffers():
            if buffer is not None and buffer.size:
                total += int(np.frombuffer(buffer, dtype=np.uint8)[::4096].sum())
    return total


class Pacer:
    """Keeps the leader about `window` bytes of stream ahead of the follower."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.cond = threading.Condition()
        self.lead = 0
        self.follow = 0
        self.leader_done = False
        self.failed = False
        self.waited = {"leader": 0.0, "follower": 0.0}

    def _wait(self, role: str, ready) -> None:
        started = time.perf_counter()
        self.cond.wait_for(ready)
        self.waited[role] += time.perf_counter() - started

    def led(self, nbytes: int) -> None:
        with self.cond:
            self.lead += nbytes
            self.cond.notify_all()
            self._wait("leader", lambda: self.lead - self.follow < self.window or self.failed)

    def finish_lead(self) -> None:
        with self.cond:
            self.leader_done = True
            self.cond.notify_all()

    def may_follow(self) -> None:
        with self.cond:
            self._wait("follower", lambda: self.lead - self.follow >= self.window
                       or self.leader_done or self.failed)

    def followed(self, nbytes: int) -> None:
        with self.cond:
            self.follow += nbytes
            self.cond.notify_all()

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()


def allocated(folder: Path) -> int:
    """Bytes allocated to the files under `folder`, plus unlinked files of it still mapped."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    prefix = str(folder)
    seen = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            if prefix not in line or not line.endswith("(deleted)\n"):
                continue
            fields = line.split()
            if fields[4] in seen:  # one file, mapped in several pieces
                continue
            seen.add(fields[4])
            try:
                total += os.stat(f"/proc/self/map_files/{fields[0]}").st_blocks * 512
            except OSError:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                total += end - start  # an upper bound, without access to map_files
    return total


def device_written(path: Path) -> int | None:
    """Bytes written so far to the block device that holds `path` (all processes)."""
    dev = os.stat(path).st_dev
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat") as stat:
            return int(stat.read().split()[6]) * 512
    except (OSError, IndexError, ValueError):
        return None


class Sampler(threading.Thread):
    """Every `period` seconds: disk allocated under the spill folder, VmRSS, free space."""

    def __init__(self, folder: Path, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.folder, self.period = folder, period
        self.stop = threading.Event()
        self.peak_disk = 0
        self.peak_rss = 0
        self.rss_split = (0, 0)  # RssAnon, RssFile at the sampled peak
        vfs = os.statvfs(folder)
        self.free_before = vfs.f_bfree * vfs.f_frsize
        self.least_free = self.free_before
        self.samples = 0

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.peak_disk = max(self.peak_disk, allocated(self.folder))
            rss = proc_status_bytes("VmRSS")
            if rss > self.peak_rss:
                self.peak_rss = rss
                self.rss_split = (proc_status_bytes("RssAnon"), proc_status_bytes("RssFile"))
            vfs = os.statvfs(self.folder)
            self.least_free = min(self.least_free, vfs.f_bfree * vfs.f_frsize)
            self.samples += 1


def run_pass(work: Path, total: int, window: int, memory: int, disk_capacity: int) -> dict:
    from batchcorder import StreamCache

    schema, reader, batches = source(total)
    spill = work / "spill"
    spill.mkdir()
    pacer = Pacer(window)
    sums = {}
    errors = []

    def read(role: str, it) -> None:
        got = 0
        try:
            if role == "follower":
                pacer.may_follow()
            for batch in it:
                got += touch(batch)
                nbytes = batch.nbytes
                # Dropped before waiting: a batch read from disk keeps its segment mapped.
                del batch
                if role == "leader":
                    pacer.led(nbytes)
                else:
                    pacer.followed(nbytes)
                    pacer.may_follow()
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append((role, err))
            pacer.fail()
        finally:
            if role == "leader":
                pacer.finish_lead()
            sums[role] = got

    sampler = Sampler(spill)
    written_before = device_written(spill)
    rss_before = proc_status_bytes("VmRSS")
    status_anon, status_file = proc_status_bytes("RssAnon"), proc_status_bytes("RssFile")
    reset_peak_rss()
    cache = StreamCache(reader, memory_capacity=memory, disk_path=spill,
                        disk_capacity=disk_capacity, max_readers=2)
    try:
        readers = [cache.reader(), cache.reader()]
        threads = [threading.Thread(target=read, args=(role, r), name=role)
                   for role, r in zip(("leader", "follower"), readers)]
        sampler.start()
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        stats = cache.stats()
        del readers
    finally:
        cache.close()
        sampler.stop.set()
        if sampler.is_alive():
            sampler.join()
    peak_rss = proc_status_bytes("VmHWM")
    written_after = device_written(work)
    if errors:
        raise RuntimeError(f"a reader failed: {errors}")
    assert sums["leader"] == sums["follower"], sums
    assert stats.batches_ingested == batches, (stats.batches_ingested, batches)
    return {
        "batches": stats.batches_ingested,
        "expected_batches": batches,
        "stream_bytes": pacer.lead,
        "seconds": seconds,
        "peak_disk": sampler.peak_disk,
        "peak_fs_delta": sampler.free_before - sampler.least_free,
        "rss_growth": peak_rss - rss_before,
        "sampled_rss_growth": sampler.peak_rss - rss_before,
        "segments_deleted": stats.segments_deleted,
        "upstream_seconds": stats.upstream_wait_seconds,
        "samples": sampler.samples,
        "rss_split_before": (status_anon, status_file),
        "rss_split": sampler.rss_split,
        "waited": dict(pacer.waited),
        "device_written": None if written_before is None or written_after is None
        else written_after - written_before,
        "schema": schema,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true",
                        help="2 GiB stream, 64 MiB window, 32 MiB memory_capacity")
    parser.add_argument("--gib", type=float, help="stream size in GiB (default 32)")
    parser.add_argument("--window-mib", type=int, help="leader ahead of follower (default 1024)")
    parser.add_argument("--memory-mib", type=int, help="memory_capacity (default 256)")
    parser.add_argument("--speed-gib", type=float, help="size of the write-speed file (default 4)")
    parser.add_argument("--out", default=str(HERE.parent / "build" / "bench-scale.md"))
    args = parser.parse_args()
    gib = args.gib or (2.0 if args.quick else 32.0)
    window = (args.window_mib or (64 if args.quick else 1024)) * MIB
    speed_size = int((args.speed_gib or (0.5 if args.quick else 4.0)) * GIB)
    # Under the window, so that the follower reads from disk.
    memory = (args.memory_mib or (32 if args.quick else 256)) * MIB
    # The window, the segment being written and the one being read, with room to spare.
    disk_capacity = 2 * window + 4 * SEGMENT_BYTES

    # On the file system of the checkout; a folder of its own, so runs never clash.
    (HERE.parent / "build").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=HERE.parent / "build"))
    # SIGTERM ends the run through the finally below, which deletes what it wrote.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        # The pass keeps at most disk_capacity on disk; the speed test runs alone.
        need = max(disk_capacity, speed_size) + 2 * GIB
        free = shutil.disk_usage(work).free
        if free < need:
            raise SystemExit(f"{free / GIB:.1f} GiB free on {work}, {need / GIB:.1f} needed")
        speed_before = write_speed(work / "speed.bin", speed_size)
        print(f"write speed before: {speed_before / MIB:.0f} MiB/s", file=sys.stderr)
        result = run_pass(work, int(gib * GIB), window, memory, disk_capacity)
        print(f"pass: {result['stream_bytes'] / GIB:.2f} GiB in {result['seconds']:.1f} s",
              file=sys.stderr)
        speed_after = write_speed(work / "speed.bin", speed_size)
        print(f"write speed after: {speed_after / MIB:.0f} MiB/s", file=sys.stderr)
        buffered = write_speed(work / "speed.bin", window, sync=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    r = result
    throughput = r["stream_bytes"] / r["seconds"]
    speed = max(speed_before, speed_after)
    disk_target = window + SEGMENT_BYTES
    rss_target = 512 * MIB
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    lines = [
        f"# The disk tier at scale ({r['stream_bytes'] / GIB:.2f} GiB stream, "
        f"{r['batches']} batches of {ROWS} rows)",
        "",
        f"`memory_capacity` {memory // MIB} MiB, `max_readers=2`, `disk_capacity` "
        f"{disk_capacity // MIB} MiB, segments of {SEGMENT_BYTES // MIB} MiB; a leader and a "
        f"follower thread {window // MIB} MiB of stream apart; columns "
        f"{', '.join(f'{f.name} {f.type}' for f in r['schema'])}.",
        "",
        "| figure | measured | target | |",
        "|---|---|---|---|",
        f"| peak disk use (spill folder, st_blocks every 50 ms) | {r['peak_disk'] / MIB:.0f} MiB "
        f"| window + one segment: {disk_target // MIB} MiB | {verdict(r['peak_disk'] <= disk_target)} |",
        f"| peak RSS growth (VmHWM) | {r['rss_growth'] / MIB:.0f} MiB | under {rss_target // MIB} MiB "
        f"| {verdict(r['rss_growth'] < rss_target)} |",
        f"| throughput | {throughput / MIB:.0f} MiB/s ({r['seconds']:.1f} s) "
        f"| 80% of write speed: {0.8 * speed / MIB:.0f} MiB/s "
        f"| {throughput / speed:.2f}x the write speed, {verdict(throughput >= 0.8 * speed)} |",
        "",
        f"Sequential write speed of the same file system ({speed_size / GIB:.1f} GiB in 64 MiB "
        f"blocks, fsync included): {speed_before / MIB:.0f} MiB/s before the pass, "
        f"{speed_after / MIB:.0f} MiB/s after; the target uses the faster. Into the page cache "
        f"only ({window // MIB} MiB, no fsync, deleted at once): {buffered / MIB:.0f} MiB/s.",
        "",
        f"Also: free-space drop of the file system during the pass {r['peak_fs_delta'] / MIB:.0f} MiB "
        f"(other processes write there too); sampled peak VmRSS growth "
        f"{r['sampled_rss_growth'] / MIB:.0f} MiB (anonymous "
        f"{(r['rss_split'][0] - r['rss_split_before'][0]) / MIB:+.0f} MiB, file-backed "
        f"{(r['rss_split'][1] - r['rss_split_before'][1]) / MIB:+.0f} MiB); "
        f"{r['segments_deleted']} segments deleted; {r['upstream_seconds']:.1f} s inside the "
        f"source; the leader waited {r['waited']['leader']:.1f} s for the follower, the "
        f"follower {r['waited']['follower']:.1f} s for the leader; {r['samples']} disk samples.",
        "",
        "Written to the block device during the pass, by every process: "
        + ("unknown." if r["device_written"] is None else
           f"{r['device_written'] / MIB:.0f} MiB, {r['device_written'] / r['stream_bytes']:.1%} "
           "of the stream."),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
