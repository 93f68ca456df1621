#!/usr/bin/env bash
# Shared helpers, sourced by launch/local.sh and launch/tpu/*.sh (not run directly).
#   run CMD ARGS...   prints "+ CMD ARGS..." and runs it; with DRY_RUN=1 only prints it.
#   die MESSAGE       prints "error: MESSAGE" to stderr and exits 1.
#   warn MESSAGE      prints "warning: MESSAGE" to stderr.

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
warn() { printf 'warning: %s\n' "$*" >&2; }
is_dry_run() { [[ "${DRY_RUN:-0}" != 0 ]]; }

# A command as one copy-pasteable line: plain words as they are, anything else in single quotes.
show_cmd() {
  local plain='^[-A-Za-z0-9_./:=@,+%]+$' arg words=()
  for arg in "$@"; do
    if [[ "$arg" =~ $plain ]]; then
      words+=("$arg")
    else
      words+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${words[*]}"
}

run() {
  printf '+ %s\n' "$(show_cmd "$@")"
  if is_dry_run; then return 0; fi
  "$@"
}
