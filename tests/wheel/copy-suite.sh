#!/usr/bin/env bash
# `copy-suite.sh DEST`: the Python suite and the files it reads, laid out in DEST as in the
# checkout, so that it runs outside the checkout against an installed wheel only
# (tests/wheel/test-wheel.sh here, .github/workflows/wheels.yml on each platform).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dest=$1
mkdir -p "$dest/tests" "$dest/bench" "$dest/examples" "$dest/mk" "$dest/demo" "$dest/tools"
cp -r "$root/tests/python" "$dest/tests/python"
# The examples of the README and docs/; the C blocks of the pages compile against the
# header; examples/c's output is on a page, and so is that of examples/*.py.
cp "$root/README.md" "$dest/"
cp -r "$root/docs" "$root/include" "$dest/"
cp -r "$root/examples/c" "$dest/examples/c"
cp "$root"/examples/*.py "$dest/examples/"
cp "$root/mk/engines.mk" "$dest/mk/"  # which doc pages make test-engines runs
# The demo and the API reference's builder are tested too, and the benchmark workloads.
cp "$root/demo/demo.py" "$dest/demo/"
cp "$root/tools/apidocs.py" "$dest/tools/"
cp "$root/bench/workloads.py" "$dest/bench/"
