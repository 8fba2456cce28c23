# mk/install.mk: libbatchcorder for C, C++, R and Julia users (docs/c-users.md).
#
# Included from the top-level Makefile, or used on its own from the repository root:
#   make -f mk/install.mk install PREFIX=$HOME/.local     # DESTDIR=... stages a package
#   make -f mk/install.mk uninstall PREFIX=$HOME/.local
#   make -f mk/install.mk test-examples   # install into build/, build + run the examples
#   make -f mk/install.mk test-r          # the R recipe (installs R from Debian if missing)
#
# Installs, under $(DESTDIR)$(PREFIX):
#   lib/libbatchcorder.so.X.Y.Z, lib/libbatchcorder.so.X -> ..., lib/libbatchcorder.so -> ...
#   lib/libbatchcorder.a
#   include/batchcorder.h, include/batchcorder.hpp
#   lib/pkgconfig/batchcorder.pc, lib/pkgconfig/batchcorder-static.pc
#   lib/cmake/batchcorder/batchcorderConfig.cmake, .../batchcorderConfigVersion.cmake

# Including this file must not change the includer's default goal.
BC_SAVED_DEFAULT_GOAL := $(.DEFAULT_GOAL)

BC_ROOT        := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
# The library is the one release build, the wheel's (`make build` in the Makefile): zig
# links it for the host triple against glibc 2.17's symbols.
BC_HOST_TARGET := $(or $(HOST_TARGET),$(shell rustc -vV | sed -n 's/^host: //p'))
BC_RELEASE_DIR := $(BC_ROOT)/target/$(BC_HOST_TARGET)/release
BC_VERSION     := $(shell sed -n 's/^version *= *"\([^"]*\)".*/\1/p' $(BC_ROOT)/Cargo.toml | head -n 1)
BC_MAJOR       := $(word 1,$(subst ., ,$(BC_VERSION)))
# What the Rust standard library needs when the static archive is linked into a program:
# `cargo rustc --release --lib --crate-type staticlib -- --print native-static-libs` on Linux.
BC_NATIVE_STATIC_LIBS ?= -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc

PYTHON3    ?= python3
INSTALL    ?= install
STRIP      ?= strip
PREFIX     ?= /usr/local
DESTDIR    ?=
libdir     ?= $(PREFIX)/lib
includedir ?= $(PREFIX)/include
# 1: install the libraries without debug info (the static archive's symbols stay; the
# shared library is the wheel's, stripped to its exported symbols); 0: as built.
INSTALL_STRIP ?= 1

# Where test-examples and test-r install the library and build the examples.
BC_TEST_DIR    := $(BC_ROOT)/build/c-users
BC_TEST_PREFIX := $(BC_TEST_DIR)/prefix

BC_INSTALLED_FILES := \
  $(libdir)/libbatchcorder.so.$(BC_VERSION) \
  $(libdir)/libbatchcorder.so.$(BC_MAJOR) \
  $(libdir)/libbatchcorder.so \
  $(libdir)/libbatchcorder.a \
  $(includedir)/batchcorder.h \
  $(includedir)/batchcorder.hpp \
  $(libdir)/pkgconfig/batchcorder.pc \
  $(libdir)/pkgconfig/batchcorder-static.pc \
  $(libdir)/cmake/batchcorder/batchcorderConfig.cmake \
  $(libdir)/cmake/batchcorder/batchcorderConfigVersion.cmake

BC_EMPTY :=
BC_SPACE := $(BC_EMPTY) $(BC_EMPTY)
BC_SUBST = sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(libdir)|g' \
  -e 's|@INCLUDEDIR@|$(includedir)|g' -e 's|@VERSION@|$(BC_VERSION)|g' \
  -e 's|@MAJOR@|$(BC_MAJOR)|g' -e 's|@NATIVE_STATIC_LIBS@|$(BC_NATIVE_STATIC_LIBS)|g' \
  -e 's|@NATIVE_STATIC_LIBS_CMAKE@|$(subst $(BC_SPACE),;,$(filter-out -lc,$(patsubst -l%,%,$(BC_NATIVE_STATIC_LIBS))))|g' \
  -e 's|@SIZEOF_VOID_P@|8|g'

.PHONY: c-lib install uninstall install-c uninstall-c test-examples test-r

# The release build (the Makefile's `build`: the wheel's compile, which also writes the
# static archive and the libbatchcorder.so.MAJOR link that the SONAME asks for). Nothing
# is compiled when the wheel is up to date.
c-lib:
	$(MAKE) --no-print-directory -C $(BC_ROOT) build

# The C library, headers, pkg-config and CMake files (the Python package installs with pip).
install: c-lib
	@test -n "$(BC_VERSION)" || { echo "install: no version found in Cargo.toml"; exit 1; }
	$(INSTALL) -d $(DESTDIR)$(libdir) $(DESTDIR)$(includedir) $(DESTDIR)$(libdir)/pkgconfig \
	  $(DESTDIR)$(libdir)/cmake/batchcorder
	@if [ "$(INSTALL_STRIP)" = 1 ]; then \
	  echo "$(STRIP) --strip-debug libbatchcorder.so libbatchcorder.a -> $(DESTDIR)$(libdir)"; \
	  $(STRIP) --strip-debug -o $(DESTDIR)$(libdir)/libbatchcorder.so.$(BC_VERSION).tmp \
	    $(BC_RELEASE_DIR)/libbatchcorder.so && \
	  $(STRIP) --strip-debug -o $(DESTDIR)$(libdir)/libbatchcorder.a.tmp \
	    $(BC_RELEASE_DIR)/libbatchcorder.a; \
	else \
	  cp $(BC_RELEASE_DIR)/libbatchcorder.so $(DESTDIR)$(libdir)/libbatchcorder.so.$(BC_VERSION).tmp && \
	  cp $(BC_RELEASE_DIR)/libbatchcorder.a $(DESTDIR)$(libdir)/libbatchcorder.a.tmp; \
	fi
	chmod 755 $(DESTDIR)$(libdir)/libbatchcorder.so.$(BC_VERSION).tmp
	chmod 644 $(DESTDIR)$(libdir)/libbatchcorder.a.tmp
	mv -f $(DESTDIR)$(libdir)/libbatchcorder.so.$(BC_VERSION).tmp \
	  $(DESTDIR)$(libdir)/libbatchcorder.so.$(BC_VERSION)
	mv -f $(DESTDIR)$(libdir)/libbatchcorder.a.tmp $(DESTDIR)$(libdir)/libbatchcorder.a
	ln -sfn libbatchcorder.so.$(BC_VERSION) $(DESTDIR)$(libdir)/libbatchcorder.so.$(BC_MAJOR)
	ln -sfn libbatchcorder.so.$(BC_MAJOR) $(DESTDIR)$(libdir)/libbatchcorder.so
	$(INSTALL) -m 644 $(BC_ROOT)/include/batchcorder.h $(BC_ROOT)/include/batchcorder.hpp \
	  $(DESTDIR)$(includedir)/
	$(BC_SUBST) $(BC_ROOT)/cmake/batchcorder.pc.in > $(DESTDIR)$(libdir)/pkgconfig/batchcorder.pc
	$(BC_SUBST) $(BC_ROOT)/cmake/batchcorder-static.pc.in \
	  > $(DESTDIR)$(libdir)/pkgconfig/batchcorder-static.pc
	$(BC_SUBST) $(BC_ROOT)/cmake/batchcorderConfig.cmake.in \
	  > $(DESTDIR)$(libdir)/cmake/batchcorder/batchcorderConfig.cmake
	$(BC_SUBST) $(BC_ROOT)/cmake/batchcorderConfigVersion.cmake.in \
	  > $(DESTDIR)$(libdir)/cmake/batchcorder/batchcorderConfigVersion.cmake
	@echo "installed libbatchcorder $(BC_VERSION) into $(DESTDIR)$(PREFIX)"

# The directories install makes, innermost first: uninstall removes those it leaves empty.
BC_INSTALL_DIRS := $(libdir)/cmake/batchcorder $(libdir)/cmake $(libdir)/pkgconfig \
  $(libdir) $(includedir) $(PREFIX)

# Removes exactly what install installed (for this version), then each directory install
# made that is left empty (one that holds anything else stays).
uninstall:
	rm -f $(addprefix $(DESTDIR),$(BC_INSTALLED_FILES))
	@for dir in $(addprefix $(DESTDIR),$(BC_INSTALL_DIRS)); do \
	  if [ -d "$$dir" ] && rmdir "$$dir" 2>/dev/null; then echo "removed the empty $$dir"; fi; \
	done
	@echo "uninstalled libbatchcorder $(BC_VERSION) from $(DESTDIR)$(PREFIX)"

# The names these targets had before `make install` installed the C library.
install-c: install
uninstall-c: uninstall

# ABI checks on the built library and the Julia recipe, then the C and C++ examples built
# from an installed tree with pkg-config and CMake, run under valgrind.
test-examples: c-lib
	bash $(BC_ROOT)/tests/abi/check-symbols.sh $(BC_RELEASE_DIR)/libbatchcorder.so $(BC_MAJOR)
	$(PYTHON3) $(BC_ROOT)/tests/abi/check-julia.py $(BC_ROOT)/docs/c-users.md \
	  $(BC_ROOT)/include/batchcorder.h
	MAKE="$(MAKE)" bash $(BC_ROOT)/tests/abi/test-installed.sh examples

# The R recipe: R CMD SHLIB against the installed library, then the R script.
test-r: c-lib
	MAKE="$(MAKE)" bash $(BC_ROOT)/tests/abi/test-installed.sh r

.DEFAULT_GOAL := $(BC_SAVED_DEFAULT_GOAL)
