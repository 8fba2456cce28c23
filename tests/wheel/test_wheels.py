"""The cross wheels of `make wheels` (mk/wheels.mk), read without running them: the macOS
and Windows wheels here can only be checked, and the Linux aarch64 one runs under emulation
elsewhere (`make test-aarch64`). `make test-wheels` runs this file after `make wheels`, and
`make test` runs its Windows part (`make test-wheel-windows`); a missing wheel fails, it is
never skipped.

For each wheel: one file of the expected tags; the package, py.typed, the licences, and
cffi declarations equal to what cffi makes of include/batchcorder_cffi.h. For its library,
read with LIEF: the file format and architecture, only the bc_* functions of
include/batchcorder.h exported; on macOS the minimum version of the wheel's tag, only system
libraries linked, the install name, and arm64's code signature; on Linux aarch64,
tests/abi/check-symbols.sh (exports, SONAME, glibc 2.17 at most), as for x86_64; on Windows
a PE32+ DLL importing only Windows' own DLLs, the very DLL C programs link, the package's
real loader, run here, opening the DLL by the name the wheel ships it under, and that file
loaded under Wine as cffi loads it on Windows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cffi
import lief
import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / "target" / "wheels"
HEADER = ROOT / "include" / "batchcorder.h"
CFFI_HEADER = ROOT / "include" / "batchcorder_cffi.h"


@dataclass(frozen=True)
class Wheel:
    triple: str
    tags: tuple[str, ...]  # the platform tags in its name, in order
    library: str  # its file in batchcorder/_native/
    macos_min: tuple[int, int] | None = None
    cpu: str = ""  # LIEF's name of the architecture


CROSS = [
    Wheel("aarch64-unknown-linux-gnu", ("manylinux2014_aarch64", "manylinux_2_17_aarch64"), "lib_native.so", cpu="AARCH64"),
    Wheel("x86_64-apple-darwin", ("macosx_10_12_x86_64",), "lib_native.dylib", (10, 12), "X86_64"),
    Wheel("aarch64-apple-darwin", ("macosx_11_0_arm64",), "lib_native.dylib", (11, 0), "ARM64"),
    # mingw-w64 links batchcorder.dll (mk/windows.mk); maturin ships it as _native.dll.
    Wheel("x86_64-pc-windows-gnu", ("win_amd64",), "_native.dll", cpu="AMD64"),
]
IDS = [w.triple for w in CROSS]


def wheel_file(w: Wheel) -> Path:
    folder = WHEELS / w.triple
    found = sorted(folder.glob("batchcorder-*.whl"))
    assert len(found) == 1, f"expected one wheel in {folder} (make wheel-{w.triple}), found {[p.name for p in found]}"
    return found[0]


def declared_functions(header: Path = HEADER) -> set[str]:
    return set(re.findall(r"\b(bc_[a-z0-9_]+)\(", header.read_text()))


def extract_library(w: Wheel, into: Path) -> Path:
    with zipfile.ZipFile(wheel_file(w)) as z:
        path = into / w.library
        path.write_bytes(z.read(f"batchcorder/_native/{w.library}"))
    return path


def installed_package(w: Wheel, into: Path) -> Path:
    """A site-packages folder holding the wheel's package, as pip lays it out."""
    site = into / "site-packages"
    with zipfile.ZipFile(wheel_file(w)) as z:
        z.extractall(site, [n for n in z.namelist() if n.startswith("batchcorder/")])
    return site


@pytest.mark.parametrize("w", CROSS, ids=IDS)
def test_the_wheel_is_one_py3_none_file_of_its_tags(w: Wheel) -> None:
    name = wheel_file(w).name
    m = re.fullmatch(r"batchcorder-(\d+\.\d+\.\d+)-py3-none-(.+)\.whl", name)
    assert m, name
    assert m.group(2).split(".") == list(w.tags), name
    with zipfile.ZipFile(wheel_file(w)) as z:
        wheel_meta = z.read(f"batchcorder-{m.group(1)}.dist-info/WHEEL").decode()
    assert sorted(re.findall(r"^Tag: (.+)$", wheel_meta, re.M)) == sorted(f"py3-none-{t}" for t in w.tags)


@pytest.mark.parametrize("w", CROSS, ids=IDS)
def test_the_wheel_carries_the_library_declarations_licences_and_py_typed(w: Wheel) -> None:
    with zipfile.ZipFile(wheel_file(w)) as z:
        names = set(z.namelist())
        for needed in ("batchcorder/__init__.py", "batchcorder/py.typed", "batchcorder/_native/__init__.py",
                       "batchcorder/_native/ffi.py", f"batchcorder/_native/{w.library}"):
            assert needed in names, f"{needed} missing from {wheel_file(w).name}"
        licences = {n.rsplit("/", 1)[1] for n in names if ".dist-info/licenses/" in n}
        assert {"LICENSE-MIT", "LICENSE-APACHE"} <= licences, licences
        # The package loads the library under the name the wheel gives it.
        assert f"'{w.library}'" in z.read("batchcorder/_native/__init__.py").decode()
        shipped = z.read("batchcorder/_native/ffi.py").decode()
    # The declarations are cffi's out-of-line ABI module of the committed header, as
    # maturin writes it.
    ffi = cffi.FFI()
    ffi.cdef(CFFI_HEADER.read_text())
    ffi.set_source("ffi", None)
    with tempfile.TemporaryDirectory() as tmp:
        made = Path(tmp) / "ffi.py"
        ffi.emit_python_code(str(made))
        assert shipped == made.read_text(), f"the wheel's cffi declarations differ from {CFFI_HEADER.name}'s"


MACOS = [w for w in CROSS if w.macos_min]


@pytest.mark.parametrize("w", MACOS, ids=[w.triple for w in MACOS])
def test_the_macos_library(w: Wheel, tmp_path: Path) -> None:
    lief.logging.disable()
    fat = lief.MachO.parse(str(extract_library(w, tmp_path)))
    assert fat is not None and fat.size == 1, "expected a Mach-O file of one architecture"
    lib = fat.at(0)
    assert lib.header.cpu_type == getattr(lief.MachO.Header.CPU_TYPE, w.cpu), lib.header.cpu_type
    assert lib.header.file_type == lief.MachO.Header.FILE_TYPE.DYLIB

    # Only the functions of the public header, as on Linux.
    exported = {s.name for s in lib.exported_symbols}
    assert {s for s in exported if not s.startswith("_bc_")} == set(), "exports outside bc_*"
    assert {s[1:] for s in exported} == declared_functions()

    # The minimum macOS the wheel's tag promises, from either load command.
    if lib.has_build_version:
        minos = tuple(lib.build_version.minos)
    else:
        assert lib.has_version_min, "no LC_BUILD_VERSION nor LC_VERSION_MIN_MACOSX"
        minos = tuple(lib.version_min.version)
    assert minos[:2] == w.macos_min and not any(minos[2:]), minos

    # Only the system's libraries; the library's own name is @rpath-relative (build.rs).
    commands = lief.MachO.LoadCommand.TYPE
    ids = [d.name for d in lib.libraries if d.command == commands.ID_DYLIB]
    assert ids == ["@rpath/libbatchcorder.0.dylib"], ids
    linked = [d.name for d in lib.libraries if d.command != commands.ID_DYLIB]
    assert "/usr/lib/libSystem.B.dylib" in linked, linked
    assert [d for d in linked if not d.startswith(("/usr/lib/", "/System/Library/"))] == [], linked
    assert not [c for c in lib.commands if c.command == commands.RPATH], "an LC_RPATH in the library"

    # Apple silicon runs signed code only: the linker's ad-hoc signature.
    if w.cpu == "ARM64":
        assert lib.has_code_signature, "arm64 code must carry a signature"


def test_the_linux_aarch64_library(tmp_path: Path) -> None:
    w = next(w for w in CROSS if w.triple == "aarch64-unknown-linux-gnu")
    path = extract_library(w, tmp_path)
    lib = lief.ELF.parse(str(path))
    assert lib is not None and lib.header.machine_type == lief.ELF.ARCH.AARCH64, "not an aarch64 ELF"
    major = re.match(r"batchcorder-(\d+)\.", wheel_file(w).name).group(1)  # type: ignore[union-attr]
    subprocess.run(["bash", str(ROOT / "tests" / "abi" / "check-symbols.sh"), str(path), major], check=True)


WINDOWS = next(w for w in CROSS if w.triple == "x86_64-pc-windows-gnu")
# What the DLL may import: DLLs of every Windows 10+ in System32, and the API sets
# (api-ms-win-*) that resolve to them. cffi opens the DLL by its full path; Windows then
# looks for its dependencies in System32, beside python.exe and, as cffi asks, in the
# DLL's folder (older cffi: on the PATH instead). The wheel ships nothing of mingw's
# (libgcc_s, libwinpthread), and a CI runner with mingw on its PATH would hide the lack.
WINDOWS_SYSTEM_DLLS = {
    "kernel32.dll", "ntdll.dll", "msvcrt.dll", "ucrtbase.dll", "advapi32.dll", "bcrypt.dll",
    "bcryptprimitives.dll", "ws2_32.dll", "userenv.dll",
}


def test_the_windows_library(tmp_path: Path) -> None:
    lief.logging.disable()
    lib = lief.PE.parse(str(extract_library(WINDOWS, tmp_path)))
    assert lib is not None, "not a PE file"
    assert lib.header.machine == lief.PE.Header.MACHINE_TYPES.AMD64, lib.header.machine
    assert lib.optional_header.magic == lief.PE.PE_TYPE.PE32_PLUS, "not PE32+"
    assert lib.header.has_characteristic(lief.PE.Header.CHARACTERISTICS.DLL), "not a DLL"

    # Only the functions of the public header, by name, none forwarded elsewhere; cffi's
    # declarations name no other.
    assert lib.has_exports, "no export table"
    export = lib.get_export()
    assert export.name == "batchcorder.dll", export.name  # as linked; the wheel renames the file
    entries = list(export.entries)
    assert not [e.name for e in entries if e.is_forwarded], "forwarded exports"
    names = {e.name for e in entries}
    assert {n for n in names if not n.startswith("bc_")} == set(), "exports outside bc_*"
    assert names == declared_functions()
    assert declared_functions(CFFI_HEADER) <= names

    # Windows' own DLLs only: no mingw runtime DLL to ship beside it.
    imported = {i.name.lower() for i in lib.imports} | {d.name.lower() for d in lib.delay_imports}
    foreign = {d for d in imported if d not in WINDOWS_SYSTEM_DLLS and not d.startswith("api-ms-win-")}
    assert foreign == set(), f"imports DLLs Windows does not have: {sorted(foreign)} (of {sorted(imported)})"
    assert "kernel32.dll" in imported, imported

    # Address space randomisation (64-bit) and no execution from data pages, as for
    # python.exe itself.
    flags = lief.PE.OptionalHeader.DLL_CHARACTERISTICS
    for flag in (flags.DYNAMIC_BASE, flags.HIGH_ENTROPY_VA, flags.NX_COMPAT):
        assert lib.optional_header.has(flag), f"{flag} is not set"


def test_the_windows_wheel_ships_the_dll_c_programs_link(tmp_path: Path) -> None:
    """One build (mk/windows.mk): the wheel's DLL is, byte for byte, the batchcorder.dll
    that C programs link through libbatchcorder.dll.a, so the C suite's run under Wine is
    a run of the wheel's DLL too."""
    built = ROOT / "target" / WINDOWS.triple / "release" / "batchcorder.dll"
    assert built.is_file(), f"{built} is missing (make wheel-{WINDOWS.triple} leaves it)"
    assert extract_library(WINDOWS, tmp_path).read_bytes() == built.read_bytes(), \
        f"the wheel's {WINDOWS.library} is not {built}: two builds"


def test_the_windows_loader_opens_the_shipped_dll(tmp_path: Path) -> None:
    """The wheel's own loader (batchcorder/_native/__init__.py, maturin's), run here by
    importing the package from the wheel's files as pip lays them out: it opens the DLL
    by the name the wheel gives it, which Linux's dlopen finds and then refuses as not an
    ELF file. With that file gone the same import fails to find it, so the message tells
    the two apart."""
    site = installed_package(WINDOWS, tmp_path)
    shipped = site / "batchcorder" / "_native" / WINDOWS.library

    def import_it() -> str:
        result = subprocess.run([sys.executable, "-c", "import batchcorder"], cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
        assert result.returncode != 0, "a Windows DLL loaded on Linux"
        return result.stderr

    said = import_it()
    assert f"cannot load library '{shipped}': {shipped}: invalid ELF header" in said, said
    shipped.unlink()
    said = import_it()
    assert f"cannot load library '{shipped}'" in said and "No such file" in said, said


def test_the_windows_dll_loads_as_cffi_opens_it_under_wine(tmp_path: Path) -> None:
    """The Win32 half of the loader, under Wine: tests/wheel/load_dll.c opens the file the
    shipped loader names, by its full path, with the search folders cffi gives
    LoadLibraryExW (the default ones and the DLL's own, not the PATH), then finds every
    function the shipped cffi declarations name, as `lib.bc_...` does. Wine is no Windows,
    but its loader resolves the DLL's imports and runs its initialisation (Rust's TLS
    callbacks included). `make test-wheel-windows` makes the Wine prefix (mk/wine.mk)."""
    wine = os.environ.get("BC_WINE64", "/usr/lib/wine/wine64")
    prefix = Path(os.environ.get("WINEPREFIX", ROOT / "target" / "wineprefix"))
    assert Path(wine).is_file() and (prefix / ".bc-ready").is_file(), \
        f"no wine prefix at {prefix}: `make wine-prefix` makes it (make test-wheel-windows does)"
    native = installed_package(WINDOWS, tmp_path) / "batchcorder" / "_native"
    opened = re.search(r"ffi\.dlopen\(os\.path\.join\(os\.path\.dirname\(__file__\), '([^']+)'\)\)",
                       (native / "__init__.py").read_text())
    assert opened, "the shipped loader no longer opens a file beside itself"
    functions = sorted(set(re.findall(r"b'[^']*?(bc_[a-z0-9_]+)'", (native / "ffi.py").read_text())))
    assert set(functions) == declared_functions(CFFI_HEADER)
    program = tmp_path / "load_dll.exe"
    subprocess.run([os.environ.get("BC_WIN_CC", "x86_64-w64-mingw32-gcc"), "-std=c11", "-municode", "-O2",
                    "-Wall", "-Wextra", "-Werror", "-o", str(program), str(ROOT / "tests" / "wheel" / "load_dll.c")],
                   check=True)

    def load(path: Path) -> subprocess.CompletedProcess[str]:
        windows_path = "Z:" + str(path).replace("/", "\\")  # how Wine shows this file system
        # Into files, not pipes: under a persistent wineserver (mk/wine.mk), the services the
        # first program starts inherit its output and stay up, so a pipe would never end.
        out, err = tmp_path / "load.out", tmp_path / "load.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            status = subprocess.run([wine, str(program), windows_path, *functions], stdout=stdout, stderr=stderr,
                                    env={**os.environ, "WINEPREFIX": str(prefix), "WINEDEBUG": "-all"},
                                    timeout=120).returncode
        return subprocess.CompletedProcess([], status, out.read_text(), err.read_text())

    done = load(native / opened.group(1))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"{len(functions)} of {len(functions)} functions found", done.stdout
    # The same program tells a missing file apart (Windows' error 126: module not found).
    done = load(native / "elsewhere.dll")
    assert done.returncode == 1 and "error 126" in done.stderr, done.stdout + done.stderr
