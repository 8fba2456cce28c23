"""Damaged and foreign saves: never a crash, never an invalid batch, whatever the verify mode.

Each damaged copy of a real save is read in a child process, in every verify mode
(`verify=False`; the default with the data file's modification time put back, so that it
checks no checksum; the default with the time changed; `verify=True`); bit flips and cuts
each by one of five ways (a reader, `cache[i]`, `take`, a windowed shuffle of batches and
rows, two shuffled shards), so that a damaged batch's first read is there. The child reports
what each read gave; the test asserts the child exited normally, that every refusal was
`CorruptCacheError`, that every batch handed out passes `validate(full=True)`, and that a
batch checked against its checksum is exactly the saved one. Also here: the manifest's
counts are tamper-evident, a save's file modes follow the umask, and a validation note
(validated.json) is trusted only for the file as it was when noted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import STRESS_SCALE, posix_only, wait_for_child, wait_until_noteable

from batchcorder import CorruptCacheError, StreamCache

BATCHES = 6
ROWS = 500

# Reads every case in every mode and prints one JSON line per read, flushed, so that a
# crash still shows which case it was. A case's "way" is how the save is read; each way
# reaches every batch, and a checked read must give what the same way gives on a live
# cache of the pristine batches.
CHILD = r"""
import itertools, json, os, sys
import pyarrow as pa
from batchcorder import CorruptCacheError, StreamCache

pristine_path, cases = sys.argv[1], json.load(sys.stdin)
pristine = pa.ipc.open_file(pristine_path)
batches = [pristine.get_batch(i) for i in range(pristine.num_record_batches)]
starts = list(itertools.accumulate((b.num_rows for b in batches), initial=0))
# The last row, the first, and one inside each batch.
taken = [starts[-1] - 1, 0, *(start + 7 for start in starts[:-1])]

def ways(cache):
    return {
        "reader": lambda: iter(cache),
        "index": lambda: (cache[i] for i in range(len(batches))),
        "take": lambda: iter([cache.take(taken)]),
        "shuffled": lambda: cache.reader(shuffle=5, shuffle_window=3, shuffle_rows=True),
        "shards": lambda: itertools.chain(
            cache.reader(shuffle=5, shard=(0, 2)), cache.reader(shuffle=5, shard=(1, 2))
        ),
    }

with StreamCache(pa.Table.from_batches(batches)) as live:
    expected_by_way = {way: list(read()) for way, read in ways(live).items()}
for case in cases:
    way = case.get("way", "reader")
    expected = expected_by_way[way]
    saved_ns = case["saved_ns"]
    for mode in ("never", "unchanged-time", "changed-time", "always"):
        if mode in ("unchanged-time", "changed-time"):
            ns = saved_ns if mode == "unchanged-time" else saved_ns + 1_000_000_000
            os.utime(os.path.join(case["path"], "data.arrow"), ns=(ns, ns))
        verify = {"never": False, "always": True}.get(mode)
        result = {"case": case["name"], "way": way, "mode": mode, "served": 0, "inexact": [],
                  "expected": len(expected),
                  "invalid": [], "refused": None, "unexpected": None}
        try:
            with StreamCache.open(case["path"], verify=verify) as cache:
                result["refused"] = "batch"
                for i, batch in enumerate(ways(cache)[way]()):
                    try:
                        batch.validate(full=True)
                    except pa.ArrowInvalid as err:
                        result["invalid"].append(f"batch {i}: {err}")
                    if i >= len(expected) or not batch.equals(expected[i]):
                        result["inexact"].append(i)
                    result["served"] += 1
                result["refused"] = None
        except CorruptCacheError as err:
            result["refused"] = result["refused"] or "open"
            result["message"] = str(err)
        except Exception as err:
            result["unexpected"] = f"{type(err).__name__}: {err}"
        print(json.dumps(result), flush=True)
"""


def table() -> pa.Table:
    # Fixed-width names, so that every batch's offsets are the same run of numbers; an
    # accent, so that an offset can land inside a character.
    rows = BATCHES * ROWS
    return pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "name": pa.array([f"é{i:05d}" for i in range(rows)], pa.string()),
            "kind": pa.array([["a", "b", "c"][i % 3] for i in range(rows)]).dictionary_encode(),
            "tags": pa.array([[i, i + 1] for i in range(rows)], pa.list_(pa.int32())),
        }
    )


def flat_table() -> pa.Table:
    # Only columns the reader decodes straight from the message (core/src/ipc_flat.rs),
    # with nulls in them.
    rows = BATCHES * ROWS

    def maybe(i, value):
        return None if i % 5 == 2 else value

    return pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "name": pa.array([f"é{i:05d}" for i in range(rows)], pa.string()),
            "x": pa.array([maybe(i, i / 4) for i in range(rows)], pa.float64()),
            "flag": pa.array([maybe(i, i % 3 == 0) for i in range(rows)], pa.bool_()),
            "code": pa.array([maybe(i, bytes([i % 256] * 3)) for i in range(rows)], pa.binary(3)),
            "blob": pa.array([maybe(i, b"x" * (i % 4)) for i in range(rows)], pa.large_binary()),
            "ts": pa.array([maybe(i, i) for i in range(rows)], pa.timestamp("us", tz="UTC")),
        }
    )


# How the child reads a case (CHILD's `ways`): a reader, every batch by its index, rows
# from every batch by theirs, a windowed shuffle of batches and rows, two shuffled shards.
WAYS = ["reader", "index", "take", "shuffled", "shards"]


def saved(path: Path, data: pa.Table) -> Path:
    with StreamCache(data.to_reader(max_chunksize=ROWS)) as cache:
        cache.persist(path)
    return path


@pytest.fixture(scope="module")
def save(tmp_path_factory) -> Path:
    return saved(tmp_path_factory.mktemp("damaged") / "pristine", table())


@pytest.fixture(scope="module", params=["mixed", "flat"])
def any_save(request, tmp_path_factory) -> Path:
    """The save above, and one of flat columns only, which another decoder reads."""
    data = table() if request.param == "mixed" else flat_table()
    return saved(tmp_path_factory.mktemp(request.param) / "pristine", data)


def damaged_copy(save: Path, where: Path, name: str, data: bytes) -> dict:
    copy = where / name
    shutil.copytree(save, copy)
    (copy / "data.arrow").write_bytes(data)
    saved_ns = json.loads((save / "manifest.json").read_text())["data_modified_ns"]
    return {"name": name, "path": str(copy), "saved_ns": saved_ns}


def offsets_at(data: bytes) -> list[int]:
    """Where each batch's `name` offsets start in the file: 0, 7, 14, ... (é is 2 bytes)."""
    needle = b"".join((7 * i).to_bytes(4, "little") for i in range(8))
    found, at = [], data.find(needle)
    while at != -1:
        found.append(at)
        at = data.find(needle, at + 1)
    assert len(found) == BATCHES, found
    return found


def read_in_child(save: Path, cases: list[dict]) -> list[dict]:
    process = subprocess.run(
        [sys.executable, "-c", CHILD, str(save / "data.arrow")],
        input=json.dumps(cases), capture_output=True, text=True, timeout=600,
    )
    results = [json.loads(line) for line in process.stdout.splitlines()]
    last = results[-1]["case"] if results else "none"
    assert process.returncode == 0, (
        f"the reading process died ({process.returncode}) after case {last}: "
        f"{process.stderr[-2000:]}"
    )
    assert len(results) == 4 * len(cases)
    return results


def check(results: list[dict]) -> None:
    for result in results:
        what = f"{result['case']}, {result['way']}, {result['mode']}"
        assert result["unexpected"] is None, f"{what}: {result['unexpected']}"
        assert not result["invalid"], f"{what}: invalid batches handed out: {result['invalid']}"
        if result["mode"] in ("changed-time", "always"):
            assert not result["inexact"], f"{what}: a checked batch differs: {result}"


def test_string_offsets_out_of_range_backwards_or_inside_a_character(any_save, tmp_path):
    save = any_save
    data = (save / "data.arrow").read_bytes()
    cases = []
    for batch, at in enumerate(offsets_at(data)):
        slot = at + 4 * (1 + batch * 37 % (ROWS - 2))
        previous = int.from_bytes(data[slot - 4 : slot], "little")
        for how, value in [
            ("past-the-end", 0x7FFF0000),
            ("negative", -5),
            ("backwards", previous - 3),
            ("inside-e-acute", previous + 1),
        ]:
            edited = bytearray(data)
            edited[slot : slot + 4] = value.to_bytes(4, "little", signed=True)
            cases.append(damaged_copy(save, tmp_path, f"batch{batch}-{how}", bytes(edited)))
    results = read_in_child(save, cases)
    check(results)
    for result in results:
        batch = int(result["case"].split("-")[0][len("batch"):])
        # Refused at the damaged batch in every mode; the batches before it are served exactly.
        assert result["refused"] == "batch", result
        assert result["served"] == batch and not result["inexact"], result


def test_bit_flips_anywhere_and_truncations(any_save, tmp_path):
    save = any_save
    data = (save / "data.arrow").read_bytes()
    rng = random.Random(26)
    cases = []
    for n in range(150 * STRESS_SCALE):
        at = rng.randrange(len(data))
        edited = bytearray(data)
        edited[at] ^= 1 << rng.randrange(8)
        cases.append(damaged_copy(save, tmp_path, f"flip-{n}-at-{at}", bytes(edited)))
    for n, keep in enumerate(sorted(rng.sample(range(len(data)), 10)) + [0]):
        cases.append(damaged_copy(save, tmp_path, f"cut-{n}-to-{keep}", data[:keep]))
    for n, case in enumerate(cases):
        case["way"] = WAYS[n % len(WAYS)]
    # Controls: the save unedited, read each way, gives what a live cache gives.
    for way in WAYS:
        cases.append({**damaged_copy(save, tmp_path, f"pristine-{way}", data), "way": way})
    results = read_in_child(save, cases)
    check(results)
    by_mode: dict[str, dict[str, int]] = {}
    for result in results:
        if result["case"].startswith("pristine-"):
            assert result["refused"] is None and not result["inexact"], result
            assert result["served"] == result["expected"] > 0, result
            continue
        outcome = result["refused"] or ("inexact" if result["inexact"] else "exact")
        counts = by_mode.setdefault(result["mode"], {})
        counts[outcome] = counts.get(outcome, 0) + 1
        if result["case"].startswith("cut-"):
            assert result["refused"] == "open", result
    # Checked modes catch every flip; unchecked ones still refuse the structural damage.
    for mode in ("changed-time", "always"):
        assert by_mode[mode].get("exact", 0) == 0, by_mode
    for mode in ("never", "unchanged-time"):
        assert by_mode[mode].get("batch", 0) > 0 and by_mode[mode].get("open", 0) > 0, by_mode


def rows_read(path: Path, verify=None) -> int:
    with StreamCache.open(path, verify=verify) as cache:
        return sum(batch.num_rows for batch in cache)


def test_a_validation_note_is_trusted_only_for_the_file_as_it_was(tmp_path):
    path = tmp_path / "saved"
    with StreamCache(table().to_reader(max_chunksize=ROWS)) as cache:
        cache.persist(path)
    data, note = path / "data.arrow", path / "validated.json"
    # Not noted while a write could still carry the file's change time.
    assert rows_read(path) == BATCHES * ROWS and not note.exists()
    wait_until_noteable(path)
    with StreamCache.open(path) as cache:
        next(iter(cache))
    assert not note.exists(), "noted before every batch was validated"
    assert rows_read(path) == BATCHES * ROWS
    written = json.loads(note.read_text())
    assert written["format"] == "batchcorder-validated"
    assert written["data_file"]["inode"] == data.stat().st_ino
    assert stat.S_IMODE(note.stat().st_mode) == stat.S_IMODE(data.stat().st_mode)
    # A damaged note is no note: the next full read validates and notes again.
    note.write_text("{}")
    assert rows_read(path) == BATCHES * ROWS
    assert json.loads(note.read_text()) == written
    # A note that cannot be written costs nothing but the next process's UTF-8 pass.
    note.unlink()
    note.mkdir()
    assert rows_read(path) == BATCHES * ROWS and note.is_dir()
    note.rmdir()
    assert rows_read(path) == BATCHES * ROWS and note.exists()
    # Invalid UTF-8 written in place, with the times put back: the note names the file as
    # it was, so every mode reads the text again and refuses it.
    before = data.stat()
    with open(data, "r+b") as file:
        at = file.read().index("é00003".encode())
        file.seek(at + 1)
        file.write(b"A")  # the second byte of é: now a lead byte with no continuation
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    for verify, why in ((None, "UTF-8"), (False, "UTF-8"), (True, "checksum")):
        with pytest.raises(CorruptCacheError, match=why):
            rows_read(path, verify)
    assert json.loads(note.read_text()) == written


def test_verify_true_checks_utf8_even_where_a_valid_note_vouches_for_the_text(tmp_path):
    # Text that is not UTF-8 from the save on, so that every checksum matches it, and a
    # note that names the data file exactly as it is: the note vouches for text that no
    # process validated. verify=True reads no note and still refuses the text.
    not_utf8 = pa.Array.from_buffers(
        pa.string(), 2, [None, pa.py_buffer(bytes([0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0])),
                         pa.py_buffer(b"a\xff")])
    path = tmp_path / "not-utf8"
    with StreamCache(pa.table({"s": not_utf8})) as cache:
        cache.persist(path)
    # A note as a process writes it, for a good save, made to name the other data file.
    good = tmp_path / "good"
    with StreamCache(table().to_reader(max_chunksize=ROWS)) as cache:
        cache.persist(good)
    wait_until_noteable(good)
    assert rows_read(good) == BATCHES * ROWS
    note = json.loads((good / "validated.json").read_text())
    data = (path / "data.arrow").stat()
    note["id"] = json.loads((path / "manifest.json").read_text())["id"]
    note["data_file"] = {
        "device": data.st_dev, "inode": data.st_ino, "bytes": data.st_size,
        "changed": list(divmod(data.st_ctime_ns, 10**9)),
        "modified": list(divmod(data.st_mtime_ns, 10**9)),
    }
    (path / "validated.json").write_text(json.dumps(note))
    # The note is valid: the default and verify=False trust it and skip the UTF-8 pass.
    for verify in (None, False):
        with StreamCache.open(path, verify=verify) as cache:
            assert cache.stats().validation == "noted"
            assert sum(batch.num_rows for batch in cache) == 2
    with StreamCache.open(path, verify=True) as cache:
        assert cache.stats().validation == "checksums"
        with pytest.raises(CorruptCacheError, match="invalid UTF-8"):
            next(iter(cache))


def test_edited_manifest_counts_are_refused_at_open(save, tmp_path):
    for key, value in [("rows", 2999), ("rows", 3001), ("batches", 5), ("data_bytes", 1)]:
        copy = tmp_path / f"{key}-{value}"
        shutil.copytree(save, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest[key] = value
        (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
        with pytest.raises(CorruptCacheError, match="manifest.json was edited"):
            StreamCache.open(copy)
    # Reformatted without a change of value (compact, keys sorted): still the same save.
    copy = tmp_path / "reformatted"
    shutil.copytree(save, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    with StreamCache.open(copy) as cache:
        assert cache.stats().rows_ingested == BATCHES * ROWS
        assert pa.table(cache) == table()


PERSIST = r"""
import sys
import pyarrow as pa
from batchcorder import StreamCache
StreamCache(pa.table({"x": [1, 2, 3], "s": ["a", "b", "c"]})).persist(sys.argv[1])
"""


def modes(path: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(path.stat().st_mode)}
    found.update({p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()})
    return found


@posix_only("file modes and the umask; a save on Windows takes its folder's ACL")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_save_follows_the_umask_like_any_file_the_user_writes(umask):
    # A folder others may enter: pytest's own temporary folders are private.
    with tempfile.TemporaryDirectory(dir="/tmp") as shared:
        os.chmod(shared, 0o755)
        path = Path(shared, "save")
        subprocess.run([sys.executable, "-c", PERSIST, str(path)], umask=umask, check=True)
        assert modes(path) == {
            ".": 0o777 & ~umask,
            "data.arrow": 0o666 & ~umask,
            "checksums.xxh3": 0o666 & ~umask,
            "manifest.json": 0o666 & ~umask,
        }
        if os.geteuid() != 0:
            return  # another user's read needs root to become that user
        expected = pa.table({"x": [1, 2, 3], "s": ["a", "b", "c"]})
        pid = os.fork()
        if pid == 0:  # the child: another user, who may open the save only if others may read it
            code = 3
            try:
                os.setgid(65534)
                os.setuid(65534)
                with StreamCache.open(path) as cache:
                    code = 0 if pa.table(cache) == expected else 1
            except PermissionError:
                code = 2
            finally:
                os._exit(code)
        assert wait_for_child(pid) == (0 if umask & 0o004 == 0 else 2)
