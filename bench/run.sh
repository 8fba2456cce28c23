#!/usr/bin/env bash
# make bench: our build and the reference release (batchcorder==0.1.3), each in its own
# virtualenv (both are named batchcorder), plus the C-level replay program.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEPS=(pyarrow numpy duckdb matplotlib)
if [ ! -x bench/.venv-ours/bin/python ]; then
  "$PY" -m venv bench/.venv-ours
  bench/.venv-ours/bin/pip install -q cffi "${DEPS[@]}"
fi
# Ours is the wheel: the one release build of the library (the Makefile's `wheel`, which
# compiles only when a source changed).
"${MAKE:-make}" --no-print-directory wheel
bench/.venv-ours/bin/pip install -q --force-reinstall --no-deps target/wheels/batchcorder-*manylinux*.whl
if [ ! -x bench/.venv-ref/bin/python ]; then
  "$PY" -m venv bench/.venv-ref
  bench/.venv-ref/bin/pip install -q "batchcorder==0.1.3" "${DEPS[@]}"
fi
# BENCH_BASELINE=<git revision>: the same workloads for that revision too ("before"),
# built from a clean checkout of it into bench/.venv-base, interleaved with the others.
if [ -n "${BENCH_BASELINE:-}" ]; then
  # Outside the checkout: inside it, cargo would take the baseline for a workspace member.
  base_src=$(mktemp -d "${TMPDIR:-/tmp}/batchcorder-base-XXXXXX")
  trap 'rm -rf "$base_src"' EXIT
  git archive "$BENCH_BASELINE" | tar -x -C "$base_src"
  if [ ! -x bench/.venv-base/bin/python ]; then
    "$PY" -m venv bench/.venv-base
    bench/.venv-base/bin/pip install -q maturin cffi "${DEPS[@]}"
  fi
  echo "building the baseline $BENCH_BASELINE ($(git rev-parse --short "$BENCH_BASELINE"))"
  CARGO_TARGET_DIR="$PWD/build/bench-base-target" PATH="$PWD/bench/.venv-base/bin:$PATH" \
    bench/.venv-base/bin/pip install --no-build-isolation --force-reinstall --no-deps "$base_src"
  export BENCH_BASELINE_NAME="$BENCH_BASELINE ($(git rev-parse --short "$BENCH_BASELINE"))"
fi
# The C-level program links the wheel's library: one Rust build in all.
NATIVE=$(bench/.venv-ours/bin/python -c 'import batchcorder._native as n, os; print(os.path.dirname(n.__file__))')
mkdir -p build/bench-lib
ln -sfn "$NATIVE/lib_native.so" build/bench-lib/libbatchcorder.so
ln -sfn "$NATIVE/lib_native.so" build/bench-lib/libbatchcorder.so.0
cc -O2 -std=c11 -Iinclude -o build/c_level bench/c_level.c \
  -Lbuild/bench-lib -lbatchcorder -Wl,-rpath,"$PWD/build/bench-lib"
bench/.venv-ours/bin/python bench/run.py
# Persisted caches across processes (issue 18): ours against pa.memory_map, no reference
# (0.1 has no persisted caches). Skipped by a partial run unless it names "processes".
if [ -z "${BENCH_WORKLOADS:-}" ] || [[ ",$BENCH_WORKLOADS," == *",processes,"* ]]; then
  bench/.venv-ours/bin/python bench/processes.py ${BENCH_QUICK:+--quick} --out bench/processes.md
fi
# Small batches from a save (issue 30, item 4): ours against pa.memory_map + ipc.open_file
# per batch, fresh and long-lived; no reference (0.1 has no saves). Skipped by a partial
# run unless it names "small-batches".
if [ -z "${BENCH_WORKLOADS:-}" ] || [[ ",$BENCH_WORKLOADS," == *",small-batches,"* ]]; then
  bench/.venv-ours/bin/python bench/small_batches.py ${BENCH_QUICK:+--quick} --out bench/small_batches.md
fi
# The disk tier at scale (issue 20, item 6): a 32 GiB pass through a 256 MiB memory tier
# with max_readers=2, against the machine's write speed. Skipped by a partial run unless
# it names "scale".
if [ -z "${BENCH_WORKLOADS:-}" ] || [[ ",$BENCH_WORKLOADS," == *",scale,"* ]]; then
  bench/.venv-ours/bin/python bench/scale.py ${BENCH_QUICK:+--quick} --out bench/scale.md
fi
# Caches over Arrow Flight (issue 19): ours against pyarrow.flight serving a pa.Table, no
# reference (0.1 has no Flight server). Skipped by a partial run unless it names "flight".
if [ -z "${BENCH_WORKLOADS:-}" ] || [[ ",$BENCH_WORKLOADS," == *",flight,"* ]]; then
  bench/.venv-ours/bin/python bench/flight.py ${BENCH_QUICK:+--quick} --out bench/flight.md
fi
