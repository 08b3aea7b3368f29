#!/usr/bin/env bash
# quietly.sh LOG WHAT COMMAND...: run one install step with one line on the terminal.
# The command's output is appended to LOG; when it fails, its output is shown in full as well.
set -uo pipefail
log=$1 what=$2
shift 2
mkdir -p "$(dirname "$log")"
step=$(mktemp)
trap 'rm -f "$step"' EXIT
printf '%s ... ' "$what"
SECONDS=0
"$@" >"$step" 2>&1
rc=$?
{
  echo "== $(date -u +%FT%TZ) $what: $* (exit $rc)"
  cat "$step"
} >>"$log"
if [ "$rc" -eq 0 ]; then
  echo "done (${SECONDS} s)"
else
  echo "FAILED (exit $rc): $*"
  cat "$step"
  echo "(every install step's output: $log)"
fi
exit "$rc"
