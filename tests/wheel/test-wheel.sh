#!/usr/bin/env bash
# The wheel as a user installs it: `test-wheel.sh WHEEL_DIR`.
# 1. auditwheel finds it consistent with manylinux_2_17 (manylinux2014), x86_64;
# 2. on every CPython found here (python3.10 ... python3.14 on the PATH), a fresh
#    virtualenv takes the wheel and the test dependencies from the package index, and the
#    Python suite runs from a copy of tests/python outside the checkout, with no cargo on
#    the PATH, so it can only import the installed package: all of it on the oldest and
#    the newest CPython, the API and interop modules (SMOKE) on those between, which
#    keeps make test near 20 minutes (make test-python runs all of it on the venv's).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
wheels=$(cd "$1" && pwd)
# The zig wheel (`pip install .` leaves a plain linux_x86_64 one beside it).
wheel=$(ls "$wheels"/batchcorder-*manylinux*.whl)
work="$root/build/test-wheel"
rm -rf "$work" && mkdir -p "$work"

echo "== auditwheel show $(basename "$wheel")"
"$root/.venv/bin/auditwheel" show "$wheel" | tee "$work/auditwheel.txt"
tr -s ' \n' ' ' < "$work/auditwheel.txt" \
  | grep -q 'consistent with the following platform tag: "manylinux_2_17_x86_64"' \
  || { echo "the wheel is not manylinux_2_17_x86_64"; exit 1; }
# One wheel for every CPython 3: py3-none, tagged for glibc 2.17 under both names.
case "$(basename "$wheel")" in
  *-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl) ;;
  *) echo "unexpected wheel tags: $(basename "$wheel")"; exit 1 ;;
esac
# Release metadata a package index shows: both licence texts, and no project URL until
# the project has a public home of its own (another project's would mislead).
metadata=$("$root/.venv/bin/python" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
print(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())' "$wheel")
for line in "License-File: LICENSE-MIT" "License-File: LICENSE-APACHE"; do
  grep -q "^$line" <<<"$metadata" || { echo "the wheel's METADATA lacks '$line'"; exit 1; }
done
if grep -q "^Project-URL:\|^Home-page:" <<<"$metadata"; then
  echo "the wheel's METADATA names a project URL: $(grep '^Project-URL:\|^Home-page:' <<<"$metadata")"
  exit 1
fi

# The suite and the files it reads, laid out as in the checkout.
bash "$root/tests/wheel/copy-suite.sh" "$work"
# No cargo, rustc or maturin: only the system's tools and the virtualenv.
clean_path=/usr/local/bin:/usr/bin:/bin
# Every CPython 3.10+ interpreter here that runs: on the PATH (pyenv's shims included),
# Debian's in /usr/bin, and pyenv's installed versions. One per minor version.
candidates=()
for minor in 10 11 12 13 14; do
  candidates+=("$(command -v "python3.$minor" || true)" "/usr/bin/python3.$minor")
done
candidates+=("${PYENV_ROOT:-$HOME/.pyenv}"/versions/*/bin/python3)
declare -A seen=()
pythons=()
for python in "${candidates[@]}"; do
  [ -x "$python" ] || continue
  version=$("$python" -c 'import sys; assert sys.implementation.name == "cpython" and sys.version_info >= (3, 10); print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
  [ -z "${seen[$version]:-}" ] || continue
  seen[$version]=$python
  pythons+=("$version")
done
[ ${#pythons[@]} -gt 0 ] || { echo "no CPython 3.10+ found"; exit 1; }
mapfile -t pythons < <(printf '%s\n' "${pythons[@]}" | sort -t. -k2,2n)
oldest=${pythons[0]} newest=${pythons[-1]}
SMOKE=(tests/python/test_cache_api.py tests/python/test_python_experience.py tests/python/test_sources.py)
tested=()
for version in "${pythons[@]}"; do
  python=${seen[$version]}
  if [ "$version" = "$oldest" ] || [ "$version" = "$newest" ]; then
    suite=(tests/python) what="the Python suite"
  else
    suite=("${SMOKE[@]}") what="the API and interop modules"
  fi
  echo "== CPython $version ($python): a fresh virtualenv with the wheel, $what"
  venv="$work/venv-$version"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q "$wheel" "pytest>=8" "hypothesis>=6" "duckdb>=1.1" "polars>=1.0" \
    "datafusion>=40" "nanoarrow>=0.6" "arro3-core>=0.4" "tqdm>=4.60" "numpy" \
    "pytest-timeout>=2.3" "pyarrow>=19" "trustme>=1.0" "pdoc==16.0.0"
  (cd "$work" && env -i HOME="$HOME" PATH="$venv/bin:$clean_path" LANG=C.UTF-8 \
     "$venv/bin/python" -c 'import shutil, batchcorder, sys
assert shutil.which("cargo") is None, "cargo is on the PATH"
assert "site-packages" in batchcorder.__file__, batchcorder.__file__
print("batchcorder", batchcorder.__version__, "from", batchcorder.__file__)')
  (cd "$work" && env -i HOME="$HOME" PATH="$venv/bin:$clean_path" LANG=C.UTF-8 \
     "$venv/bin/python" -m pytest -q -p no:cacheprovider "${suite[@]}")
  tested+=("$version")
done
echo "test-wheel: the installed wheel passed on CPython ${tested[*]} (the whole suite on $oldest and $newest)"
