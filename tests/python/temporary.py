"""Temporary folders for the suite's caches and saves, in a module of its own (not
conftest) so that test modules imported from another folder's tests (tests/engines imports
test_types) find it whichever conftest is loaded."""

from __future__ import annotations

import sys
import tempfile


def temporary_directory(prefix: str | None = None) -> "tempfile.TemporaryDirectory[str]":
    """A temporary folder for caches and saves. On Windows a file stays while an array a
    test still holds maps it (docs/processes.md, "Windows"), so what cannot be deleted on
    leaving is left to the system's temporary folder there; elsewhere any failure raises."""
    return tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=sys.platform == "win32")
