#!/usr/bin/env bash
# Crash leftovers, as a C program meets them (test_crash.c is each process). Processes
# are killed with SIGKILL (under wine, the wine process that runs the program: no Windows
# code runs on the way out):
# - four keep a folder in one parent folder, two disk tiers and two unfinished saves; one
#   of each is killed, and the next cache over that parent removes the dead owners'
#   folders and leaves the live owners' alone. The live ones then exit and remove their own.
# - processes that churn disk tiers and saves there are killed at random instants, beside
#   a live one: it never loses a folder, the next cache leaves nothing of theirs, and every
#   save that finished opens whole.
#   tests/c/crash.sh BUILD/test_crash [RUNNER...]
# make test-c runs it natively; make test-c-windows with RUNNER wine64 and
# BC_WINDOWS_PATHS=1 (the program is handed Z:\... paths, wine's name for the Unix root).
set -euo pipefail

exe=$1
shift
runner=("$@")
work=$(mktemp -d "${TMPDIR:-/tmp}/bc-crash-XXXXXX")
parent=$work/parent
mkdir "$parent"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
check() {  # NAME COMMAND...: one check
  local name=$1
  shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "not ok - $name"; fi
}
arg() {  # a path as the program takes it
  if [ "${BC_WINDOWS_PATHS:-0}" = 1 ]; then printf 'Z:%s' "${1//\//\\}"; else printf '%s' "$1"; fi
}
ours() {  # the folders of ours in the parent, sorted
  (cd "$parent" && ls -A | grep -E '^(batchcorder-|\.batchcorder-save-)' || true) | LC_ALL=C sort
}
listed() {  # NAME FILE: whether the sweep listed NAME while it lived
  grep -qxF "entry $1" "$2"
}
not() { ! "$@"; }
is_one_of() {  # NAME PREFIX: NAME is one folder with that prefix
  [ -n "$1" ] && [ "$(printf '%s\n' "$1" | wc -l)" = 1 ] && [[ $1 == "$2"* ]]
}

# start NAME KIND STOP: a holder, its pid in pid_NAME and its new folder in folder_NAME
start() {
  local name=$1 kind=$2 stop=$3 before after out=$work/$1.out
  before=$(ours)
  "${runner[@]}" "$exe" hold "$(arg "$parent")" "$kind" "$(arg "$stop")" >"$out" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 600); do
    grep -qs '^ready' "$out" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  after=$(ours)
  printf -v "pid_$name" '%s' "$pid"
  printf -v "folder_$name" '%s' "$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after"))"
  check "$name is ready" grep -q '^ready' "$out"
  grep -q '^ready' "$out" || cat "$out"
}

start0=$EPOCHREALTIME
start killed_spill spill "$work/never"
start live_spill spill "$work/stop"
start killed_save save "$work/never"
start live_save save "$work/stop"
check "each disk tier made one folder" is_one_of "$folder_killed_spill" batchcorder-
check "... the other too" is_one_of "$folder_live_spill" batchcorder-
check "each unfinished save made one staging folder" is_one_of "$folder_killed_save" .batchcorder-save-
check "... the other too" is_one_of "$folder_live_save" .batchcorder-save-

for name in killed_spill killed_save; do
  pid_var=pid_$name
  kill -9 "${!pid_var}" 2>/dev/null || true
  status=0
  { wait "${!pid_var}"; } 2>/dev/null || status=$?
  check "$name died of SIGKILL (status $status)" test "$status" = 137
done
folder_of() { local v=folder_$1; printf '%s' "${!v}"; }
check "the killed disk tier left its folder" test -d "$parent/$(folder_of killed_spill)"
check "the killed save left its staging folder" test -d "$parent/$(folder_of killed_save)"

sweep=$work/sweep.out
status=0
"${runner[@]}" "$exe" sweep "$(arg "$parent")" >"$sweep.raw" 2>&1 || status=$?
tr -d '\r' <"$sweep.raw" >"$sweep"  # a Windows program's lines end in CRLF
check "the sweeping cache ran (status $status)" test "$status" = 0
check "it removed the dead disk tier's folder" test ! -e "$parent/$(folder_of killed_spill)"
check "it removed the dead save's staging folder" test ! -e "$parent/$(folder_of killed_save)"
check "it never saw the dead disk tier's folder" not listed "$(folder_of killed_spill)" "$sweep"
check "nor the dead save's" not listed "$(folder_of killed_save)" "$sweep"
check "a live disk tier's folder is left alone" listed "$(folder_of live_spill)" "$sweep"
check "a live save's staging folder is left alone" listed "$(folder_of live_save)" "$sweep"
check "the sweeper had its own folder, and nothing else was there" \
  test "$(grep -c '^entry ' "$sweep")" = 3
check "the live owners are still running" kill -0 "$pid_live_spill" "$pid_live_save"
check "once the sweeper is gone, the live folders are what is left" \
  test "$(ours)" = "$(printf '%s\n' "$(folder_of live_spill)" "$(folder_of live_save)" | LC_ALL=C sort)"

touch "$work/stop"
for name in live_spill live_save; do
  pid_var=pid_$name
  status=0
  wait "${!pid_var}" || status=$?
  check "$name exited cleanly when asked (status $status)" test "$status" = 0
done
check "and removed their folders: the parent is empty" test -z "$(ls -A "$parent")"
[ "$failed" = 0 ] || { echo "== the sweep listed:"; cat "$sweep"; }

# Killed at random instants: processes that make, fill and drop disk tiers and saves in
# the parent, round after round, are killed 0 to 99 ms after they start churning, first
# while a live one churns beside them (so sweeps run while it makes and commits its
# folders), then alone. The live one never loses a folder (it reads everything back), the
# next cache leaves nothing of the dead ones, and every save that finished opens whole: a
# kill never leaves half a save.
# wait_ready OUT PID: until the program printed "ready" or ended
wait_ready() {
  for _ in $(seq 600); do
    grep -qs '^ready' "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
ready=0
churners=0
kill_a_churner() {  # one churner, killed at a random instant; ready counts those that started
  churners=$((churners + 1))
  "${runner[@]}" "$exe" churn "$(arg "$parent")" "$(arg "$work/never")" "$churners" >"$work/churn.out" 2>&1 &
  local pid=$!
  pids+=("$pid")
  if wait_ready "$work/churn.out" "$pid"; then ready=$((ready + 1)); else cat "$work/churn.out"; fi
  sleep "$(printf '0.%03d' $((RANDOM % 100)))"
  kill -9 "$pid" 2>/dev/null || true
  { wait "$pid"; } 2>/dev/null || true
}
"${runner[@]}" "$exe" churn "$(arg "$parent")" "$(arg "$work/stop-churn")" live >"$work/live.out" 2>&1 &
live=$!
pids+=("$live")
wait_ready "$work/live.out" "$live" || true
beside=${BC_CRASH_KILLS:-8}
for _ in $(seq "$beside"); do kill_a_churner; done
touch "$work/stop-churn"
status=0
wait "$live" || status=$?
tr -d '\r' <"$work/live.out" >"$work/live.txt"
check "the live churner never read anything wrong ($(grep '^rounds' "$work/live.txt" || cat "$work/live.txt"))" \
  test "$status" = 0
# Alone, a kill's leftovers stay until the next churner starts: they are counted then.
alone=10
left=0
for _ in $(seq "$alone"); do
  kill_a_churner
  [ -n "$(ours)" ] && left=$((left + 1))
done
check "every churning process got ready ($ready of $((beside + alone)))" test "$ready" = $((beside + alone))
check "kills left folders behind ($left of $alone)" test "$left" -ge 1
status=0
"${runner[@]}" "$exe" sweep "$(arg "$parent")" >/dev/null 2>&1 || status=$?
check "a sweep after them ran (status $status)" test "$status" = 0
check "and left none of their folders" test -z "$(ours)"
status=0
"${runner[@]}" "$exe" verify "$(arg "$parent")" >"$work/verify.raw" 2>&1 || status=$?
tr -d '\r' <"$work/verify.raw" >"$work/verify.txt"
check "every save that finished opens whole, verified ($(tail -n 1 "$work/verify.txt"))" test "$status" = 0
check "saves finished" test "$(sed -n 's/^saves //p' "$work/verify.txt")" -gt 0
[ "$status" = 0 ] || cat "$work/verify.txt"

echo "crash leftovers: $passed passed, $failed failed ($(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $start0 }") s)"
[ "$failed" = 0 ]
