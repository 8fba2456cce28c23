# mk/wine.mk: the C suite (tests/c) and the C and C++ examples built for Windows x64 with
# mingw-w64 and run under wine64, against the Windows wheel's batchcorder.dll.
# Included from the top-level Makefile, after mk/windows.mk (WIN_TARGET, WIN_LIBDIR, the
# build and win-tools: the rustup target and mingw-w64).
#
#   make test-c-windows    # part of make test
#   make wine-prefix       # the tools (installed from Debian's packages when missing) and
#                          # the wine prefix, target/wineprefix, made once (make
#                          # test-windows-rust and test-wheel-windows use it too)
#
# The library is the Windows wheel's compile (wheel-x86_64-pc-windows-gnu), never a second
# one. The programs are linked against its import library, libbatchcorder.dll.a, with
# winpthreads, libgcc and libstdc++ linked in, so they need no DLL but batchcorder.dll,
# copied beside them, and Windows' own. The crash test kills the wine process (SIGKILL).

# The compilers of mingw-w64's POSIX thread model: std::thread (examples/cpp) needs it.
BC_WIN_CC     ?= x86_64-w64-mingw32-gcc-posix
BC_WIN_CXX    ?= x86_64-w64-mingw32-g++-posix
# Debian's wine64 package puts the loader here, not on the PATH (/usr/bin/wine is the
# `wine` package's script, which prefers a 32-bit wine when there is one).
WINE64        ?= /usr/lib/wine/wine64
WINESERVER    ?= /usr/lib/wine/wineserver64
WINE_PREFIX   := $(CURDIR)/target/wineprefix
# Quiet, and no Mono or Gecko installer offered while the prefix is made.
BC_WINE_ENV   := WINEPREFIX=$(WINE_PREFIX) WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
BC_WIN_BUILD  := $(CURDIR)/build/windows
# with_wineserver COMMANDS: run them with one wineserver for the prefix, up all along, then
# stopped. The one wine starts by itself here exits as soon as its last client does
# (-p0), and a program started at that instant fails ("wine client error: ... Connection
# reset by peer"), as the crash test's short processes met; a persistent server left up
# would outlive make. The prefix is this checkout's, so -k stops only its own server.
# Wine's services, started by the first program, stay up with the server and hold that
# program's stdout and stderr: read a program's output from files, never to a pipe's end.
bc_with_wineserver = $(BC_WINE_ENV) $(WINESERVER) -k 2>/dev/null; $(BC_WINE_ENV) $(WINESERVER) -p \
  && { $(1); status=$$?; $(BC_WINE_ENV) $(WINESERVER) -k; exit $$status; }

.PHONY: wine-tools wine-prefix test-c-windows test-examples-windows

# wine64 (and `wine`, its launcher scripts) from Debian's packages when missing (root is
# needed), after win-tools' mingw-w64.
wine-tools: win-tools
	@[ -x $(WINE64) ] && [ -x $(WINESERVER) ] && command -v wine >/dev/null && exit 0; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "wine64 or wine is missing: install Debian's wine64 and wine packages as root \
	    (apt-get install --no-install-recommends wine64 wine), then run make again" >&2; exit 1; fi; \
	start=$$(date +%s); echo "== installing wine64 and wine from Debian's packages"; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
	  wine64 wine && echo "== installed wine64 and wine in $$(( $$(date +%s) - start )) s"

# The prefix (a C: drive and a registry) is made once, then kept; then the stand-in for the
# bcryptprimitives.dll wine 8 lacks goes into its system32 (mk/windows.mk, win-wine-shim).
$(WINE_PREFIX)/.bc-booted: | wine-tools
	@echo "== making the wine prefix $(WINE_PREFIX)"
	@start=$$(date +%s); rm -rf $(WINE_PREFIX); \
	$(BC_WINE_ENV) $(WINE64) wineboot -i >$(CURDIR)/target/wineprefix.log 2>&1 \
	  || { cat $(CURDIR)/target/wineprefix.log; exit 1; }; \
	$(BC_WINE_ENV) $(WINESERVER) -w; \
	echo "== wine prefix made in $$(( $$(date +%s) - start )) s"
	@touch $@
$(WINE_PREFIX)/.bc-ready: $(WINE_PREFIX)/.bc-booted $(WIN_WINE_SHIM)
	$(MAKE) --no-print-directory win-wine-shim WINEPREFIX=$(WINE_PREFIX)
	@touch $@
wine-prefix: $(WINE_PREFIX)/.bc-ready

# tests/c as on Linux (but valgrind), then the examples, and the time they took.
test-c-windows: wheel-$(WIN_TARGET) wine-prefix
	@start=$$(date +%s); $(call bc_with_wineserver,$(BC_WINE_ENV) $(MAKE) --no-print-directory \
	  -C tests/c WINDOWS=1 LIBDIR=$(CURDIR)/$(WIN_LIBDIR) OUT=$(BC_WIN_BUILD)/tests-c \
	  CC=$(BC_WIN_CC) CXX=$(BC_WIN_CXX) RUN=$(WINE64) \
	  && $(MAKE) --no-print-directory bc-examples-windows \
	  && echo "== test-c-windows: tests/c and the examples built and passed under wine in \
	  $$(( $$(date +%s) - start )) s")

# examples/c and examples/cpp as a Windows user builds them: the header and the import
# library, no pkg-config.
test-examples-windows: wheel-$(WIN_TARGET) wine-prefix
	@$(call bc_with_wineserver,$(MAKE) --no-print-directory bc-examples-windows)
.PHONY: bc-examples-windows
bc-examples-windows:
	mkdir -p $(BC_WIN_BUILD)/examples && cp $(WIN_LIBDIR)/batchcorder.dll $(BC_WIN_BUILD)/examples/
	$(BC_WIN_CC) -std=c11 -O2 -Wall -Wextra -Werror -pthread -Iinclude -o $(BC_WIN_BUILD)/examples/replay_c.exe \
	  examples/c/replay.c $(WIN_LIBDIR)/libbatchcorder.dll.a -static
	$(BC_WIN_CXX) -std=c++17 -O2 -Wall -Wextra -Wpedantic -Werror -pthread -Iinclude \
	  -o $(BC_WIN_BUILD)/examples/replay_cpp.exe examples/cpp/replay.cpp $(WIN_LIBDIR)/libbatchcorder.dll.a -static
	$(BC_WINE_ENV) $(WINE64) $(BC_WIN_BUILD)/examples/replay_c.exe
	$(BC_WINE_ENV) $(WINE64) $(BC_WIN_BUILD)/examples/replay_cpp.exe
