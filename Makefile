# batchcorder: `make demo` and `make test` work on a fresh machine (Rust, Python 3, a C
# compiler); everything else comes from the package registries.

PYTHON    ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
CARGO     ?= cargo
LIBDIR    := target/release
CARGO_TEST_FLAGS ?=

.PHONY: all build header check-header venv install demo test test-rust test-c test-python bench clean

all: build

build:
	$(CARGO) build --release
	ln -sfn libbatchcorder.so $(LIBDIR)/libbatchcorder.so.$(BC_MAJOR)

# Regenerate the committed public header (cbindgen runs in build.rs, pinned in Cargo.toml).
header: build
	cp $(LIBDIR)/../batchcorder.h include/batchcorder.h

# Fails when include/batchcorder.h differs from what cbindgen makes of the sources.
check-header: build
	@diff -u include/batchcorder.h target/batchcorder.h \
	  || { echo "include/batchcorder.h is stale: run 'make header' and commit it"; exit 1; }

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "maturin>=1.16,<2" "cffi>=1.17" "pyarrow>=14" \
	  "numpy" "pytest>=8" "hypothesis>=6" "duckdb>=1.1" "polars>=1.0" "datafusion>=40" \
	  "nanoarrow>=0.6" "arro3-core>=0.4" "mypy>=1.10" "tqdm>=4.60"
	touch $@

venv: $(VENV)/.ready

# Builds the wheel (maturin, cffi bindings) and installs it, as `pip install .` does.
install: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) -m pip install -q --no-build-isolation --force-reinstall --no-deps .

demo: install
	$(VPY) demo/demo.py

# The dev profile: debug assertions and overflow checks on, and a much shorter build than
# release (bench/notes.md); the tests take seconds either way. `make stress` runs the
# same tests in release at a larger scale.
test-rust:
	$(CARGO) test --workspace --features fault-injection $(CARGO_TEST_FLAGS)

test-c: build
	$(MAKE) -C tests/c LIBDIR=$(CURDIR)/$(LIBDIR)

test-python: install
	mkdir -p build
	$(VPY) -m pytest -q tests/python
	$(VPY) -m mypy
	cd build && $(CURDIR)/$(VPY) -m pytest -q -p no:cacheprovider --doctest-modules --pyargs batchcorder

# The fuzz smoke run replays the seed corpus under ASan, then fuzzes briefly.
test: check-header test-rust test-c test-python test-examples test-r
	$(MAKE) --no-print-directory fuzz-smoke FUZZ_SMOKE_SECONDS=30

# C, C++, R and Julia users: install-c, uninstall-c, test-examples, test-r (docs/c-users.md).
include mk/install.mk

# Reliability: fuzz-smoke, fuzz-long (mk/fuzz.mk); stress, tsan, miri (mk/stress.mk).
include mk/fuzz.mk
include mk/stress.mk

# Speed and memory side by side with plain pyarrow and the reference release (see bench/);
# it builds the library once, as the wheel it installs.
bench:
	bash bench/run.sh

clean:
	$(CARGO) clean
	rm -rf $(VENV) build dist
