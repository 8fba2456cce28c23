# mk/aarch64.mk: the aarch64 wheel and library tested on an arm64 Linux under emulation,
# from this Linux x86_64 machine. Included from the top-level Makefile:
#   make test-aarch64          # both below
#   make test-aarch64-python   # the Python suite, in an arm64 Debian with the wheel
#   make test-aarch64-c        # tests/c built for aarch64, run against the wheel's library
#
# Everything comes from the package registries (docs/building.md, "Testing aarch64"):
# - the host: qemu-user-static, binfmt-support and debootstrap (apt-get, as root, when
#   missing); the kernel's binfmt_misc runs aarch64 programs through qemu-aarch64-static,
#   registered with the F flag, so they run inside a chroot too;
# - the arm64 root, $(AARCH64_ROOT): a minimal Debian (debootstrap, from the mirror of the
#   machine's apt sources) with Python 3 and a virtualenv of the test packages (PyPI's
#   aarch64 wheels: pyarrow, DuckDB, Polars, ...). Made once and kept: it is rebuilt only
#   when missing (`rm -rf build/aarch64` starts over);
# - the wheel: the wheels section's wheel-aarch64-unknown-linux-gnu target.
#
# The suite runs in a chroot of the arm64 root, inside a private mount namespace
# (unshare) so the /proc, /dev and /sys it mounts there vanish with it, from a copy of
# tests/python and the files it reads (tests/wheel/copy-suite.sh, as for test-wheel.sh).

# Including this file must not change the includer's default goal.
BC_AARCH64_SAVED_DEFAULT_GOAL := $(.DEFAULT_GOAL)

BC_AARCH64_REPO  := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
VENV             ?= .venv
AARCH64_TRIPLE   := aarch64-unknown-linux-gnu
AARCH64_WHEELS   := $(BC_AARCH64_REPO)/target/wheels/$(AARCH64_TRIPLE)
AARCH64_BUILD    := $(BC_AARCH64_REPO)/build/aarch64
AARCH64_ROOT     ?= $(AARCH64_BUILD)/root
AARCH64_SUITE    ?= bookworm
# The Debian mirror of the machine's apt sources (deb822 or one-line style), else deb.debian.org.
AARCH64_MIRROR   ?= $(or $(shell { sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources; \
  sed -En 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' /etc/apt/sources.list; } \
  2>/dev/null | tr ' ' '\n' | grep -v -e security -e '^$$' | head -n 1),http://deb.debian.org/debian)
# procps: test_stress reads its RSS with ps.
AARCH64_DEBS     := python3,python3-venv,python3-pip,procps,ca-certificates
# The root's virtualenv and where the suite runs, as the chroot sees them.
AARCH64_VENV     := /opt/bc-venv
AARCH64_WORK     := /bc-test
# The test packages, as tests/wheel/test-wheel.sh installs them.
AARCH64_TEST_PACKAGES := "pytest>=8" "hypothesis>=6" "duckdb>=1.1" "polars>=1.0" "datafusion>=40" \
  "nanoarrow>=0.6" "arro3-core>=0.4" "tqdm>=4.60" "numpy" "pytest-timeout>=2.3" "pyarrow>=19" \
  "trustme>=1.0" "pdoc==16.0.0"
# Deselected, each for a reason of the emulation (docs/building.md, "Testing aarch64"):
# - test_docs's C blocks: the root has no C compiler (test-aarch64-c covers the aarch64
#   library from C instead);
# - test_full_disk_for_real's full-filesystem cases: they mount a small tmpfs in
#   `unshare --map-root-user`, and qemu-user runs every program with a thread of its own,
#   so Linux refuses it a user namespace (unshare: Invalid argument);
# - test_a_process_killed_at_any_instant...: it kills children within 4 ms of their start,
#   which under emulation is before they reach the windows it aims at;
# - test_caches_created_and_closed...rss_and_fds_flat: ps gives qemu's RSS, and qemu's own
#   heap grows over its 300 caches, where the same loop natively stays flat.
# Not deselected: the spawn and forkserver tests. One spawn worker hung once between its
# fork and its exec (qemu's, not ours: docs/building.md); deselecting one of them would
# not keep the others from meeting it.
AARCH64_DESELECT ?= \
  --deselect tests/python/test_docs.py::test_c_block_compiles \
  --deselect tests/python/test_docs.py::test_a_programs_output_is_what_its_page_shows \
  --deselect "tests/python/test_disk.py::test_full_disk_for_real[full-filesystem-28-on_insertion]" \
  --deselect "tests/python/test_disk.py::test_full_disk_for_real[full-filesystem-28-on_eviction]" \
  --deselect tests/python/test_crash_leftovers.py::test_a_process_killed_at_any_instant_leaves_nothing_the_next_cache_keeps \
  --deselect tests/python/test_stress.py::test_caches_created_and_closed_in_a_loop_keep_rss_and_fds_flat
# Twice the native 300 s per test: the slowest take under a minute emulated
# (docs/building.md), and a hang should end the run soon.
AARCH64_TEST_TIMEOUT ?= 600
AARCH64_PYTEST_ARGS  ?=

# zig for the C tests, as mk/cross.mk runs it (`make venv-build` installs it).
AARCH64_ZIG    ?= $(if $(filter /%,$(VENV)),$(VENV),$(BC_AARCH64_REPO)/$(VENV))/bin/python -m ziglang
AARCH64_ZIGTGT := aarch64-linux-gnu.2.17
AARCH64_LIB    := $(AARCH64_BUILD)/lib

# The chroot, in a mount namespace of its own: `$(BC_AARCH64_CHROOT) 'COMMAND'` runs the
# shell COMMAND in the arm64 root with a clean environment (the proxy and index settings
# pass through). The mounts vanish with the namespace, even when a test fails.
BC_AARCH64_PASS := http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY \
  PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_DEFAULT_TIMEOUT
BC_AARCH64_CHROOT = unshare --mount --propagation private sh -ec '\
  r="$(AARCH64_ROOT)"; \
  mount -t proc proc "$$r/proc"; mount --rbind /dev "$$r/dev"; mount --rbind /sys "$$r/sys"; \
  exec chroot "$$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=$(AARCH64_VENV)/bin:/usr/local/bin:/usr/bin:/bin \
    $(foreach v,$(BC_AARCH64_PASS),$(if $($(v)),$(v)="$($(v))")) \
    /bin/sh -ec "$$0"'

.PHONY: test-aarch64 test-aarch64-python test-aarch64-c aarch64-host aarch64-root aarch64-venv aarch64-lib

test-aarch64: test-aarch64-c test-aarch64-python

# The host's side: qemu, binfmt_misc and debootstrap.
aarch64-host:
	@missing=; for c in qemu-aarch64-static update-binfmts debootstrap unshare; do \
	  command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "== aarch64: installing qemu-user-static binfmt-support debootstrap (missing:$$missing)"; \
	  [ "$$(id -u)" = 0 ] || { echo "apt-get needs root: run as root, or install them yourself"; exit 1; }; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
	    qemu-user-static binfmt-support debootstrap util-linux || exit 1; \
	fi
	@[ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	@[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
	@grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 \
	  && grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
	  || { echo "binfmt_misc does not run aarch64 programs through qemu with the F flag:"; \
	       cat /proc/sys/fs/binfmt_misc/qemu-aarch64; exit 1; }

# The arm64 Debian, made once. A root left half-made by a failed run is made again.
$(AARCH64_ROOT)/.bc-root: | aarch64-host
	@if [ -e $(AARCH64_ROOT) ]; then \
	  if grep -q " $(AARCH64_ROOT)[/ ]" /proc/mounts; then \
	    echo "something is mounted under $(AARCH64_ROOT): unmount it first"; exit 1; fi; \
	  echo "== aarch64: removing a partial root"; rm -rf $(AARCH64_ROOT); fi
	@echo "== aarch64: debootstrap $(AARCH64_SUITE) arm64 from $(AARCH64_MIRROR) (about 5 min)"
	mkdir -p $(dir $(AARCH64_ROOT))
	debootstrap --arch=arm64 --variant=minbase --include=$(AARCH64_DEBS) \
	  $(AARCH64_SUITE) $(AARCH64_ROOT) $(AARCH64_MIRROR)
	touch $@

# The host's name resolution (debootstrap writes no /etc/hosts: without one, localhost
# is not loopback), CA bundle and pip settings, on every run (they may change).
aarch64-root: $(AARCH64_ROOT)/.bc-root
	cp -L /etc/resolv.conf /etc/hosts $(AARCH64_ROOT)/etc/
	cp -L /etc/ssl/certs/ca-certificates.crt $(AARCH64_ROOT)/etc/ssl/certs/ca-certificates.crt
	if [ -f /etc/pip.conf ]; then cp -L /etc/pip.conf $(AARCH64_ROOT)/etc/pip.conf; fi

# The root's virtualenv with the test packages: made again when this file changes.
$(AARCH64_ROOT)$(AARCH64_VENV)/.bc-ready: $(AARCH64_ROOT)/.bc-root $(BC_AARCH64_REPO)/mk/aarch64.mk | aarch64-root
	@echo "== aarch64: the test packages, in the arm64 root's virtualenv (under emulation)"
	$(BC_AARCH64_CHROOT) 'python3 -m venv $(AARCH64_VENV) && \
	  pip install --progress-bar on $(AARCH64_TEST_PACKAGES)'
	touch $@
aarch64-venv: $(AARCH64_ROOT)$(AARCH64_VENV)/.bc-ready

# The Python suite against the installed aarch64 wheel, from a copy of the tests.
test-aarch64-python: wheel-aarch64-unknown-linux-gnu $(AARCH64_ROOT)$(AARCH64_VENV)/.bc-ready | aarch64-root
	@set -e; w=$$(ls $(AARCH64_WHEELS)/batchcorder-*manylinux_2_17_aarch64.whl); \
	  [ $$(echo "$$w" | wc -w) = 1 ] || { echo "not one aarch64 wheel: $$w"; exit 1; }; \
	  echo "== aarch64: $$(basename $$w) and the tests into the arm64 root"; \
	  rm -rf $(AARCH64_ROOT)$(AARCH64_WORK) && mkdir -p $(AARCH64_ROOT)$(AARCH64_WORK)/wheel; \
	  cp $$w $(AARCH64_ROOT)$(AARCH64_WORK)/wheel/
	bash $(BC_AARCH64_REPO)/tests/wheel/copy-suite.sh $(AARCH64_ROOT)$(AARCH64_WORK)
	$(BC_AARCH64_CHROOT) 'cd $(AARCH64_WORK) && \
	  pip uninstall -q -y batchcorder && pip install wheel/batchcorder-*.whl && \
	  python -c "import platform, batchcorder; print(platform.machine(), batchcorder.__version__, batchcorder.__file__)" && \
	  BC_DOCS_VENVS=0 BC_TEST_TIMEOUT=$(AARCH64_TEST_TIMEOUT) python -m pytest -q -p no:cacheprovider \
	    -rfEs --durations=15 $(AARCH64_DESELECT) $(AARCH64_PYTEST_ARGS) tests/python'

# The aarch64 library, from the wheel (the one build), as libbatchcorder.so with its SONAME link.
aarch64-lib: wheel-aarch64-unknown-linux-gnu
	@set -e; w=$$(ls $(AARCH64_WHEELS)/batchcorder-*manylinux_2_17_aarch64.whl); \
	  [ $$(echo "$$w" | wc -w) = 1 ] || { echo "not one aarch64 wheel: $$w"; exit 1; }; \
	  rm -rf $(AARCH64_LIB) && mkdir -p $(AARCH64_LIB); \
	  $(BC_AARCH64_REPO)/$(VENV)/bin/python -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	    [n] = [n for n in z.namelist() if n.startswith("batchcorder/_native/") and n.endswith(".so")]; \
	    open(sys.argv[2], "wb").write(z.read(n))' "$$w" $(AARCH64_LIB)/libbatchcorder.so; \
	  soname=$$(readelf -d $(AARCH64_LIB)/libbatchcorder.so | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p'); \
	  ln -sfn libbatchcorder.so $(AARCH64_LIB)/$$soname; \
	  echo "== aarch64: $$(basename $$w)'s library in $(AARCH64_LIB) (SONAME $$soname)"

# tests/c for aarch64 (zig, glibc 2.17 as the wheel), run through binfmt_misc and qemu
# with the arm64 root's glibc (QEMU_LD_PREFIX); valgrind is the host's, so not used.
test-aarch64-c: aarch64-lib $(AARCH64_ROOT)/.bc-root
	QEMU_LD_PREFIX=$(AARCH64_ROOT) $(MAKE) -C $(BC_AARCH64_REPO)/tests/c LIBDIR=$(AARCH64_LIB) \
	  OUT=$(AARCH64_BUILD)/tests-c VALGRIND= \
	  CC="$(AARCH64_ZIG) cc -target $(AARCH64_ZIGTGT)" CXX="$(AARCH64_ZIG) c++ -target $(AARCH64_ZIGTGT)"
	@file $(AARCH64_BUILD)/tests-c/test_capi | grep -q 'ARM aarch64' \
	  || { echo "the C tests are not aarch64 programs: $$(file $(AARCH64_BUILD)/tests-c/test_capi)"; exit 1; }

.DEFAULT_GOAL := $(BC_AARCH64_SAVED_DEFAULT_GOAL)
