"""Shared test settings: `BC_STRESS_SCALE` (default 1) multiplies the randomized and
concurrent tests' work; `make stress` raises it. Every test has a time limit
(`BC_TEST_TIMEOUT` seconds, default 300, pytest-timeout): a hang fails with every
thread's stack instead of stalling the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from temporary import temporary_directory  # noqa: F401 (the suite imports it from here too)

STRESS_SCALE = max(1, int(os.environ.get("BC_STRESS_SCALE", "1")))
TEST_TIMEOUT = float(os.environ.get("BC_TEST_TIMEOUT", "300")) * STRESS_SCALE


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The thread method also ends a hang inside a C call, where a signal would wait.
    limit = pytest.mark.timeout(TEST_TIMEOUT, method="thread")
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(limit)



def posix_only(reason: str) -> pytest.MarkDecorator:
    """Skips a test on Windows, where what it exercises does not exist (fork, POSIX
    signals, file modes, /proc); `reason` says which. docs/processes.md ("Windows") says
    what Windows does instead."""
    return pytest.mark.skipif(sys.platform == "win32", reason=f"POSIX only: {reason}")


def windows_memory_kib(peak: bool = False) -> int:
    """This process's working set (or its peak) in KiB, from GetProcessMemoryInfo: the
    Windows counterpart of the resident set."""
    import ctypes
    from ctypes import wintypes

    class Counters(ctypes.Structure):
        _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
            (name, ctypes.c_size_t) for name in (
                "PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage",
                "PagefileUsage", "PeakPagefileUsage")]

    counters = Counters(cb=ctypes.sizeof(Counters))
    psapi = ctypes.WinDLL("psapi", use_last_error=True)
    psapi.GetProcessMemoryInfo.argtypes = [wintypes.HANDLE, ctypes.POINTER(Counters), wintypes.DWORD]
    kernel32 = ctypes.WinDLL("kernel32")
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    if not psapi.GetProcessMemoryInfo(kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb):
        raise ctypes.WinError(ctypes.get_last_error())
    return (counters.PeakWorkingSetSize if peak else counters.WorkingSetSize) // 1024


def run_child(script: str, *args: str, timeout: float = 300) -> str:
    """Run ``script`` in a fresh Python that can import conftest; its standard output."""
    path = os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          check=True, timeout=timeout, env={**os.environ, "PYTHONPATH": path}).stdout


def peak_resident_kib() -> int:
    """This process's peak resident set since it started, in KiB. On Linux that is
    VmHWM: ``ru_maxrss`` there keeps the peak of the process that forked it from before
    its exec, so a child of a large test process would report that one's peak."""
    if sys.platform == "win32":
        return windows_memory_kib(peak=True)
    if sys.platform.startswith("linux"):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # macOS: bytes


def windows_handle_count() -> int:
    """This process's open handles (GetProcessHandleCount): the Windows counterpart of
    its file descriptors."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    kernel32.GetProcessHandleCount.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    count = wintypes.DWORD()
    if not kernel32.GetProcessHandleCount(kernel32.GetCurrentProcess(), ctypes.byref(count)):
        raise ctypes.WinError(ctypes.get_last_error())
    return count.value


def wait_for_child(pid: int, seconds: float = 60.0) -> int:
    """The exit code of the forked child `pid`; a child still running after `seconds`
    (stuck on a lock another thread held at the fork) is killed and fails the test."""
    import signal
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child {pid} did not exit within {seconds} s")


def listening_location(process, said, seconds: float = 60.0) -> str:
    """The location a ``batchcorder-flight`` child prints ("listening at LOCATION"), read
    from its stdout; a child that does not say it within `seconds` is killed and fails the
    test with what `said()` returns (its log)."""
    import re
    import threading

    found: list[str] = []

    def scan() -> None:
        for line in process.stdout:
            match = re.match(r"listening at (\S+)", line)
            if match:
                found.append(match.group(1))
                return

    reader = threading.Thread(target=scan, daemon=True)
    reader.start()
    reader.join(seconds)
    if not found:
        process.kill()
        pytest.fail(f"batchcorder-flight never said where it listens: {said()}")
    return found[0]


# A process that validated every batch of a save notes it (validated.json) only once the
# data file's change time is this old (core/src/save/validation_note.rs).
NOTE_SETTLES_AFTER = 3.0


def wait_until_noteable(save: Path) -> None:
    """Sleep until the data file of `save` is old enough for a validation note."""
    changed = (Path(save) / "data.arrow").stat().st_ctime
    time.sleep(max(0.0, changed + NOTE_SETTLES_AFTER + 0.2 - time.time()))
