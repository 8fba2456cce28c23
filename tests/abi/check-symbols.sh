#!/usr/bin/env bash
# The ABI surface of the shared library: it exports only bc_* functions, its SONAME
# carries the ABI major version, and it needs no glibc symbol newer than 2.17.
#   tests/abi/check-symbols.sh target/x86_64-unknown-linux-gnu/release/libbatchcorder.so 0
set -euo pipefail
lib=${1:?usage: check-symbols.sh LIBRARY.so MAJOR}
major=${2:?usage: check-symbols.sh LIBRARY.so MAJOR}

symbols=$(nm -D --defined-only "$lib" | awk 'NF >= 3 { print $3 }' | sed 's/@.*//' | sort -u)
count=$(printf '%s\n' "$symbols" | grep -c '^bc_' || true)
others=$(printf '%s\n' "$symbols" | grep -v '^bc_' | grep -v '^$' || true)
if [ -n "$others" ]; then
  echo "check-symbols: $lib exports symbols outside the bc_ namespace:" >&2
  printf '  %s\n' $others >&2
  exit 1
fi
if [ "$count" -lt 10 ]; then
  echo "check-symbols: $lib exports only $count bc_* symbols; is it the right library?" >&2
  exit 1
fi

soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
if [ "$soname" != "libbatchcorder.so.$major" ]; then
  echo "check-symbols: SONAME of $lib is '${soname:-none}', expected libbatchcorder.so.$major" >&2
  exit 1
fi

# Every bc_* function the header declares is exported, and every export is declared.
header=$(dirname "$0")/../../include/batchcorder.h
declared=$(grep -oE '\bbc_[a-z0-9_]+\(' "$header" | tr -d '(' | sort -u)
missing=$(comm -23 <(printf '%s\n' "$declared") <(printf '%s\n' "$symbols"))
undeclared=$(comm -13 <(printf '%s\n' "$declared") <(printf '%s\n' "$symbols"))
if [ -n "$missing" ] || [ -n "$undeclared" ]; then
  [ -z "$missing" ] || { echo "check-symbols: declared in batchcorder.h, not exported:"; printf '  %s\n' $missing; } >&2
  [ -z "$undeclared" ] || { echo "check-symbols: exported, not declared in batchcorder.h:"; printf '  %s\n' $undeclared; } >&2
  exit 1
fi
# The build links against glibc 2.17's symbols (zig, for manylinux2014): the library runs
# on any glibc from 2.17 on, and a newer version here means the build lost that.
glibc=$(readelf -V --wide "$lib" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -Vu | tail -n 1)
if [ -z "$glibc" ] || [ "$(printf '%s\n' "$glibc" 2.17 | sort -V | tail -n 1)" != 2.17 ]; then
  echo "check-symbols: $lib needs GLIBC_${glibc:-?}; the build should need 2.17 at most" >&2
  exit 1
fi
echo "check-symbols: $count exported symbols, all bc_* and all in batchcorder.h; SONAME $soname;" \
  "glibc $glibc at most"
