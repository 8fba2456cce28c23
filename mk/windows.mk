# mk/windows.mk: Windows x64 (x86_64-pc-windows-gnu), built on this Linux x86_64 machine.
# Included from the top-level Makefile, after mk/wheels.mk.
#
#   make wheel-x86_64-pc-windows-gnu   # the wheel, the DLL and its import library (below)
#   make check-windows                 # clippy -D warnings for the target, as check-cross
#   make win-tools                     # what those need: the rustup target, mingw-w64
#   make test-windows-rust             # the Rust tests under wine (see below)
#
# One maturin run (one rustc compile) gives:
#   target/wheels/x86_64-pc-windows-gnu/batchcorder-<version>-py3-none-win_amd64.whl
#   $(WIN_LIBDIR)/batchcorder.dll and $(WIN_LIBDIR)/libbatchcorder.dll.a (its import
#   library, for C programs linked by mingw-w64; MSVC's link.exe reads it too)
# The DLL exports the bc_* functions alone: rustc hands the linker a .def file of the
# cdylib's #[no_mangle] items. mingw-w64's gcc links (rustc's windows-gnu target expects
# it) and compiles zstd's C sources; it links against msvcrt.dll, which every Windows has.
# maturin needs a Python for the cffi declarations only: the host's, since no Windows
# CPython runs here (the wheel is py3-none, for every CPython from 3.10 on).

WIN_TARGET := x86_64-pc-windows-gnu
# The DLL's folder, for the C suite under wine (tests/c) and C users.
WIN_LIBDIR := target/$(WIN_TARGET)/release
WIN_CC     := x86_64-w64-mingw32-gcc
# The cc crate and cargo read these (dashes as underscores).
WIN_ENV := CC_x86_64_pc_windows_gnu=$(WIN_CC) AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar \
  CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=$(WIN_CC)

.PHONY: win-tools check-windows wheel-$(WIN_TARGET)

# The rustup target (rustup's own server), and mingw-w64 from Debian's packages when its
# gcc is missing (apt-get needs root; its progress shows).
win-tools:
	@rustup target list --installed | grep -qx $(WIN_TARGET) || rustup target add $(WIN_TARGET)
	@command -v $(WIN_CC) >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "$(WIN_CC) is missing: install Debian's mingw-w64 package \
	    as root (apt-get install mingw-w64), then run make again"; exit 1; }; \
	  echo "installing mingw-w64 (Debian's package) for $(WIN_CC)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y mingw-w64 \
	  || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y mingw-w64; }; }
	@command -v $(WIN_CC) >/dev/null || { echo "$(WIN_CC) is still missing after apt-get"; exit 1; }

# The cross wheels' stamp rule (mk/wheels.mk) made for this target: no zig, the host
# Python for cffi, and the DLL and import library checked for.
$(WHEEL_DIR)/$(WIN_TARGET)/.built: $(WHEEL_SOURCES) mk/windows.mk | venv-build win-tools
	rm -f $(WHEEL_DIR)/$(WIN_TARGET)/batchcorder-*.whl
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(WIN_ENV) $(VENV)/bin/maturin build --release \
	  --target $(WIN_TARGET) --interpreter $(CURDIR)/$(VPY) --out $(WHEEL_DIR)/$(WIN_TARGET)
	@for f in batchcorder.dll libbatchcorder.dll.a; do test -f $(WIN_LIBDIR)/$$f \
	  || { echo "$(WIN_LIBDIR)/$$f is missing after the build"; exit 1; }; done
	touch $@
.SECONDARY: $(WHEEL_DIR)/$(WIN_TARGET)/.built

wheel-$(WIN_TARGET): $(WHEEL_DIR)/$(WIN_TARGET)/.built
	@ls $(WHEEL_DIR)/$(WIN_TARGET)/batchcorder-*.whl $(WIN_LIBDIR)/batchcorder.dll \
	  $(WIN_LIBDIR)/libbatchcorder.dll.a

wheels: wheel-$(WIN_TARGET)

# Wine 8 (Debian 12's) lacks bcryptprimitives.dll, which Rust's standard library imports
# (ProcessPrng): without it batchcorder.dll and every Rust test program fail to load
# (status c0000135). tools/wine/bcryptprimitives.c stands in for it, in a wine prefix's
# system32 only: `make win-wine-shim WINEPREFIX=...` puts it there.
WIN_WINE_SHIM := target/$(WIN_TARGET)/wine-shims/bcryptprimitives.dll
$(WIN_WINE_SHIM): tools/wine/bcryptprimitives.c | win-tools
	mkdir -p $(dir $@)
	$(WIN_CC) -shared -O2 -o $@ $< -lbcrypt

.PHONY: win-wine-shim test-windows-rust
win-wine-shim: $(WIN_WINE_SHIM)
	@[ -n "$(WINEPREFIX)" ] || { echo "name the wine prefix: make win-wine-shim WINEPREFIX=..."; exit 1; }
	@[ -d "$(WINEPREFIX)/drive_c/windows/system32" ] || WINEDEBUG=-all wineboot -i
	cp $(WIN_WINE_SHIM) "$(WINEPREFIX)/drive_c/windows/system32/bcryptprimitives.dll"

# The Rust tests (core, C ABI, C Data) as Windows programs under wine, fault injection
# on, as make test-rust runs them, in mk/wine.mk's prefix under its persistent wineserver
# (bc_with_wineserver). Not in make test: minutes more, and wine is no Windows
# (docs/processes.md, "Windows", says what is Unix-only).
test-windows-rust: win-tools wine-prefix
	@$(call bc_with_wineserver,$(BC_WINE_ENV) $(WIN_ENV) CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=$(WINE64) \
	  $(CARGO) test --target $(WIN_TARGET) --workspace --exclude batchcorder-header \
	  --features fault-injection $(CARGO_TEST_FLAGS))

# Every crate and its tests, as Linux's clippy runs them, with and without fault injection.
check-windows: win-tools
	$(WIN_ENV) $(CARGO) clippy --workspace --all-targets --target $(WIN_TARGET) -- -D warnings
	$(WIN_ENV) $(CARGO) clippy --workspace --all-targets --features batchcorder-core/fault-injection \
	  --target $(WIN_TARGET) -- -D warnings
