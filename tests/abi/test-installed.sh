#!/usr/bin/env bash
# Builds and runs the examples as a user would: against an installed libbatchcorder, found
# with pkg-config and CMake, never against target/. Driven by mk/install.mk:
#   tests/abi/test-installed.sh examples   # install/uninstall checks, C and C++ examples
#   tests/abi/test-installed.sh r          # the R recipe
# Missing tools (cmake, R, valgrind) are installed from Debian's packages when running as
# root with apt-get (CI); BC_NO_APT=1 turns that off, and what needs them is then skipped.
set -euo pipefail

skipped=
mode=${1:?usage: test-installed.sh examples|r}
root=$(cd "$(dirname "$0")/../.." && pwd)
make=${MAKE:-make}
work=$root/build/c-users
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$root/Cargo.toml" | head -n 1)
major=${version%%.*}
unset LD_LIBRARY_PATH  # programs must find the installed library through their rpath

step() { printf '\n== %s\n' "$*"; }
passed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { echo "test-installed: FAILED: $*" >&2; exit 1; }

apt_updated=0
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${BC_NO_APT:-0}" != 1 ]; }
apt_install() {
  local start=$SECONDS
  echo "installing $* from Debian's packages"
  if [ "$apt_updated" = 0 ]; then apt-get update -qq || return 1; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { echo "apt-get install $* failed"; return 1; }
  echo "installed $* in $((SECONDS - start)) s"
}
# need TOOL PACKAGE...: true if TOOL is (now) on PATH.
need() {
  local tool=$1
  shift
  command -v "$tool" >/dev/null && return 0
  can_apt || return 1
  apt_install "$@" && command -v "$tool" >/dev/null
}

install_into() {  # PREFIX: a fresh install, as `make install PREFIX=...` does it
  rm -rf "$1"
  "$make" --no-print-directory -f "$root/mk/install.mk" install PREFIX="$1" >/dev/null
  echo "installed into $1"
}

uninstall_from() {  # PREFIX: uninstall, and check nothing of ours is left
  "$make" --no-print-directory -f "$root/mk/install.mk" uninstall PREFIX="$1" >/dev/null
  local left
  left=$(find "$1" 2>/dev/null || true)
  [ -z "$left" ] || fail "uninstall left files or folders behind in $1: $left"
  ok "uninstalled from $1: no files or folders left"
}

# run_checked PROGRAM: under valgrind (memcheck, leaks), or as built when there is none.
run_checked() {
  if [ "$have_valgrind" = 1 ]; then
    valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
      --errors-for-leak-kinds=definite,indirect "$@" || fail "valgrind: $* (exit $?)"
    echo "valgrind: clean ($*)"
  else
    "$@" || fail "$*"
  fi
}

# check_linked PROGRAM: it resolves libbatchcorder.so.MAJOR from the install prefix.
check_linked() {
  local line
  line=$(ldd "$1" | grep 'libbatchcorder' || true)
  case "$line" in
    *"libbatchcorder.so.$major => $prefix/lib/libbatchcorder.so.$major"*) echo "linked: $line" ;;
    *) fail "$1 does not load libbatchcorder.so.$major from $prefix/lib: '${line:-not linked}'" ;;
  esac
}

need pkg-config pkgconf || fail "pkg-config is needed and could not be installed"

case "$mode" in
examples)
  have_valgrind=0
  if need valgrind valgrind; then have_valgrind=1; else echo "valgrind not installed: running the examples without it"; fi

  step "install with DESTDIR (a staged package) and uninstall"
  stage=$work/stage
  rm -rf "$stage"
  "$make" --no-print-directory -f "$root/mk/install.mk" install DESTDIR="$stage" \
    PREFIX=/opt/batchcorder >/dev/null
  expected="lib/cmake/batchcorder/batchcorderConfig.cmake
lib/cmake/batchcorder/batchcorderConfigVersion.cmake
lib/libbatchcorder.a
lib/libbatchcorder.so
lib/libbatchcorder.so.$major
lib/libbatchcorder.so.$version
lib/pkgconfig/batchcorder-static.pc
lib/pkgconfig/batchcorder.pc
include/batchcorder.h
include/batchcorder.hpp"
  got=$(cd "$stage/opt/batchcorder" && find . \( -type f -o -type l \) | sed 's|^\./||' | LC_ALL=C sort)
  [ "$got" = "$(printf '%s\n' "$expected" | LC_ALL=C sort)" ] || fail "staged files differ:
$got"
  lib=$stage/opt/batchcorder/lib
  [ "$(readlink "$lib/libbatchcorder.so")" = "libbatchcorder.so.$major" ] || fail "libbatchcorder.so link"
  [ "$(readlink "$lib/libbatchcorder.so.$major")" = "libbatchcorder.so.$version" ] || fail "SONAME link"
  if grep -rq "$stage" "$lib/pkgconfig" "$lib/cmake"; then fail "DESTDIR leaked into the config files"; fi
  grep -q '^prefix=/opt/batchcorder$' "$lib/pkgconfig/batchcorder.pc" || fail "batchcorder.pc prefix"
  bash "$root/tests/abi/check-symbols.sh" "$lib/libbatchcorder.so.$version" "$major"
  ok "staged: the 10 files, links and config paths are right"
  "$make" --no-print-directory -f "$root/mk/install.mk" uninstall DESTDIR="$stage" \
    PREFIX=/opt/batchcorder >/dev/null
  left=$(find "$stage" -mindepth 1 -not -path "$stage/opt")
  [ -z "$left" ] || fail "uninstall left: $left"
  ok "uninstall with DESTDIR removed every file and the folders install made"

  prefix=$work/prefix
  step "install PREFIX=$prefix"
  install_into "$prefix"
  export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
  [ "$(pkg-config --modversion batchcorder)" = "$version" ] || fail "pkg-config --modversion"
  ok "pkg-config: batchcorder $(pkg-config --modversion batchcorder): $(pkg-config --cflags --libs batchcorder)"

  step "the installed headers compile alone (C11, C++17, -Wall -Wextra -Wpedantic -Werror)"
  mkdir -p "$work/headers"
  printf '#include <batchcorder.h>\nint main(void) { return bc_version() == 0; }\n' > "$work/headers/c.c"
  printf '#include <batchcorder.hpp>\nint main() { return batchcorder::version().empty(); }\n' > "$work/headers/cpp.cpp"
  cc -std=c11 -Wall -Wextra -Wpedantic -Werror $(pkg-config --cflags batchcorder) \
    -c "$work/headers/c.c" -o "$work/headers/c.o"
  c++ -std=c++17 -Wall -Wextra -Wpedantic -Werror $(pkg-config --cflags batchcorder) \
    -c "$work/headers/cpp.cpp" -o "$work/headers/cpp.o"
  ok "batchcorder.h and batchcorder.hpp"

  step "examples/c with pkg-config: replay, two readers on two pthreads"
  rm -rf "$work/c" && cp -r "$root/examples/c" "$work/c"
  "$make" --no-print-directory -C "$work/c" replay replay-static CFLAGS="-O2 -g -Wall -Wextra -Werror"
  check_linked "$work/c/replay"
  run_checked "$work/c/replay"
  ok "examples/c, shared"
  step "examples/c linked statically (pkg-config batchcorder-static)"
  if ldd "$work/c/replay-static" | grep -q libbatchcorder; then fail "replay-static loads libbatchcorder.so"; fi
  "$work/c/replay-static" | tail -n 1
  ok "examples/c, static"

  step "examples/cpp with pkg-config"
  rm -rf "$work/cpp" && cp -r "$root/examples/cpp" "$work/cpp"
  "$make" --no-print-directory -C "$work/cpp" replay CXXFLAGS="-O2 -g -Wall -Wextra -Wpedantic -Werror"
  check_linked "$work/cpp/replay"
  run_checked "$work/cpp/replay"
  ok "examples/cpp, pkg-config"

  step "examples/cpp with CMake: find_package(batchcorder) -> batchcorder::batchcorder"
  if need cmake cmake; then
    cmake -S "$work/cpp" -B "$work/cpp/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS="-Wall -Wextra -Werror" >/dev/null
    cmake --build "$work/cpp/cmake-build" >/dev/null
    check_linked "$work/cpp/cmake-build/replay"
    run_checked "$work/cpp/cmake-build/replay"
    ok "examples/cpp, CMake"
    step "examples/cpp with CMake, batchcorder::batchcorder_static"
    cmake -S "$work/cpp" -B "$work/cpp/cmake-static" -DCMAKE_PREFIX_PATH="$prefix" \
      -DREPLAY_STATIC=ON >/dev/null
    cmake --build "$work/cpp/cmake-static" >/dev/null
    if ldd "$work/cpp/cmake-static/replay" | grep -q libbatchcorder; then fail "static CMake build loads libbatchcorder.so"; fi
    "$work/cpp/cmake-static/replay" | tail -n 1
    ok "examples/cpp, CMake, static"
  else
    echo "cmake not installed: CMake build skipped"
    skipped=2
  fi

  step "uninstall PREFIX=$prefix"
  uninstall_from "$prefix"
  echo
  echo "test-examples: $passed passed, 0 failed${skipped:+, $skipped skipped}"
  ;;

r)
  if ! need R r-base-core r-base-dev; then
    echo "R not installed: skipped (install r-base-core and r-base-dev to run the R recipe)"
    echo "test-r: 0 passed, 0 failed, 1 skipped"
    exit 0
  fi
  prefix=$work/r-prefix
  step "install PREFIX=$prefix"
  install_into "$prefix"
  export PKG_CONFIG_PATH=$prefix/lib/pkgconfig

  step "examples/r: R CMD SHLIB against the installed library"
  rm -rf "$work/r" && cp -r "$root/examples/r" "$work/r"
  (
    cd "$work/r"
    PKG_CPPFLAGS="$(pkg-config --cflags batchcorder)" \
      PKG_LIBS="$(pkg-config --libs batchcorder) -Wl,-rpath,$(pkg-config --variable=libdir batchcorder)" \
      R CMD SHLIB -o bcr.so bcr.c >/dev/null
  )
  check_linked "$work/r/bcr.so"
  step "Rscript replay.R ($(R --version | head -n 1))"
  (cd "$work/r" && Rscript replay.R ./bcr.so) || fail "replay.R"
  ok "examples/r"

  step "uninstall PREFIX=$prefix"
  uninstall_from "$prefix"
  echo
  echo "test-r: $passed passed, 0 failed"
  ;;
*)
  fail "unknown mode $mode (examples or r)"
  ;;
esac
