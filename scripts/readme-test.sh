#!/usr/bin/env bash
# Pastes every shell block of README.md, in order, the way a newcomer would, against a fresh
# `make run` on a fresh database; then checks README.md's and docs/*.md's relative links.
#
#   scripts/readme-test.sh            (from the repository root; also `make readme-test`)
#
# Blocks are the ```sh (or ```bash, ```shell) fences; other languages are not run. All blocks
# run in ONE bash, in order, so variables carry over as in a terminal, under `set -euo pipefail`
# and inherit_errexit. A block fails when a command fails, when one of its `NAME=$(…)`
# assignments leaves NAME empty, or when its output contains the API's error envelope
# (`"error":`), or when it runs longer than 10 minutes. Each block is printed before it runs,
# its output as it comes, and a summary line ends the run.
#
# Directives are HTML comments (invisible on GitHub), one per line, on the lines right before a
# fence:
#
#   <!-- readme-test: server URL [URL...] -->
#       A long-running "terminal 1" block (`make run`): started in the background in its own
#       process group, with its environment as the script started (not the blocks' exports),
#       output in a log. Waits until every URL answers 2xx (loopback only; up to 20 minutes,
#       for a first build), fails with the log's tail if it stops first, and requires cargo's
#       `Finished` line in its log (the build shows its progress). Its ports must be free
#       beforehand. Stopped, with its whole process group, when the script ends.
#   <!-- readme-test: skip REASON -->
#       Not run; REASON is printed.
#   <!-- readme-test: expect TEXT -->
#       TEXT (the rest of the line, literally) must appear in the block's output, including what
#       processes it started print later, within 20 s of the block's end. Repeatable.
#   <!-- readme-test: errors-expected -->
#       The block's output may contain the error envelope.
#
# Fresh state: DATABASE_URL, make's variables (`make readme-test` is not a terminal) and every
# CHANNELD_* variable are unset, the database
# `channeld_readme` is dropped, and CHANNELD_DEV_DB=channeld_readme makes the Makefile and
# scripts/dev-db.sh use it. Needs no standard input; leaves none of the processes it started
# behind (a private PostgreSQL or Redis that `make run` starts under .data/ keeps running, as it
# does after `make run`).
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/.."

readonly DEV_DB=channeld_readme
readonly SERVER_TIMEOUT=1200 # seconds for a server block to answer: a first build is long
readonly EXPECT_TIMEOUT=20   # seconds for an expected text to appear
readonly BLOCK_TIMEOUT=${README_TEST_BLOCK_TIMEOUT:-600} # seconds for any other block to finish

# --- Parsing -------------------------------------------------------------------------------

# Writes each shell block of README.md to $1/NNN.sh and its place and directives to $1/NNN.meta
# (`line N`, `heading H`, then one directive per line). Refuses malformed directives.
split_blocks() {
  mkdir -p "$1"
  awk -v dir="$1" '
    function fail(at, message) {
      printf "readme-test: README.md:%d: %s\n", at, message > "/dev/stderr"
      failed = 1
      exit 1
    }
    BEGIN { fence = ""; pending = 0; heading = "(top)"; n = 0 }
    fence != "" {
      closing = $0
      if (closing ~ /^[ \t]*```+[ \t]*$/) {
        gsub(/[ \t]/, "", closing)
        if (length(closing) >= length(fence)) {
          fence = ""
          if (out != "") close(out)
          out = ""
          next
        }
      }
      if (out != "") print > out
      next
    }
    /^[ \t]*```/ {
      rest = $0
      sub(/^[ \t]*/, "", rest)
      fence = rest
      sub(/[^`].*$/, "", fence)
      lang = substr(rest, length(fence) + 1)
      sub(/^[ \t]+/, "", lang)
      sub(/[ \t{].*$/, "", lang)
      if (lang == "sh" || lang == "bash" || lang == "shell") {
        n++
        out = sprintf("%s/%03d.sh", dir, n)
        meta = sprintf("%s/%03d.meta", dir, n)
        printf "" > out
        printf "line %d\nheading %s\n", NR, heading > meta
        for (i = 1; i <= pending; i++) print directive[i] > meta
        close(meta)
      } else if (pending) {
        fail(at[1], "a readme-test directive must be right before a ```sh fence, not a ```" lang " one")
      }
      pending = 0
      next
    }
    /^[ \t]*<!--[ \t]*readme-test:/ {
      d = $0
      sub(/^[ \t]*<!--[ \t]*readme-test:[ \t]*/, "", d)
      if (d !~ /-->[ \t]*$/) fail(NR, "a readme-test directive must end with --> on its own line")
      sub(/[ \t]*-->[ \t]*$/, "", d)
      kind = d
      sub(/[ \t].*$/, "", kind)
      args = substr(d, length(kind) + 1)
      sub(/^[ \t]+/, "", args)
      if (kind == "server" || kind == "skip" || kind == "expect") {
        if (args == "") fail(NR, "`" kind "` needs an argument")
      } else if (kind == "errors-expected") {
        if (args != "") fail(NR, "`errors-expected` takes no argument")
      } else {
        fail(NR, "unknown readme-test directive `" kind "` (server, skip, expect, errors-expected)")
      }
      pending++
      directive[pending] = args == "" ? kind : kind " " args
      at[pending] = NR
      next
    }
    pending { fail(at[1], "a readme-test directive must be on the lines right before a ```sh fence") }
    /^#+[ \t]/ { heading = $0; sub(/^#+[ \t]+/, "", heading) }
    END {
      if (failed) exit 1
      if (pending) fail(at[1], "a readme-test directive must be on the lines right before a ```sh fence")
      if (fence != "") fail(NR, "a fenced block is not closed")
      if (n == 0) fail(NR, "no ```sh block found")
    }
  ' README.md
}

# Prints `file<TAB>line<TAB>target` for every link and image of the Markdown files given, outside
# fenced blocks and code spans: inline `[text](target)` and reference definitions `[x]: target`.
markdown_links() {
  awk '
    FNR == 1 { fence = "" }
    fence != "" {
      closing = $0
      gsub(/[ \t]/, "", closing)
      if (closing ~ /^```+$/ && length(closing) >= length(fence)) fence = ""
      next
    }
    /^[ \t]*```/ { fence = $0; sub(/^[ \t]*/, "", fence); sub(/[^`].*$/, "", fence); next }
    {
      line = $0
      gsub(/`[^`]*`/, "", line)
      if (match(line, /^ ? ? ?\[[^]]+\]:[ \t]*[^ \t]+/)) {
        target = substr(line, RSTART, RLENGTH)
        sub(/^[^]]*\]:[ \t]*/, "", target)
        printf "%s\t%d\t%s\n", FILENAME, FNR, target
      }
      while (match(line, /\]\([^)]*\)/)) {
        target = substr(line, RSTART + 2, RLENGTH - 3)
        line = substr(line, RSTART + RLENGTH)
        sub(/^[ \t]+/, "", target)
        sub(/[ \t].*$/, "", target)
        printf "%s\t%d\t%s\n", FILENAME, FNR, target
      }
    }
  ' "$@"
}

# Every relative link of README.md and docs/*.md must name a file inside the repository.
check_links() {
  local root file line target path resolved bad=0 count=0
  root=$(pwd -P)
  local files=(README.md)
  for file in docs/*.md; do [ -e "$file" ] && files+=("$file"); done
  while IFS=$'\t' read -r file line target; do
    target=${target#<}
    target=${target%>}
    case $target in
      '' | '#'* | [a-zA-Z]*:*) continue ;; # anchors, http(s), mailto
    esac
    count=$((count + 1))
    path=${target%%#*}
    path=${path%%\?*}
    path=${path//%20/ }
    case $path in
      /*) resolved=$root$path ;;
      *) resolved=$root/$(dirname "$file")/$path ;;
    esac
    resolved=$(realpath -m "$resolved")
    if [[ $resolved != "$root" && $resolved != "$root"/* ]]; then
      echo "readme-test: $file:$line: link \`$target\` points outside the repository" >&2
      bad=1
    elif [ ! -e "$resolved" ]; then
      echo "readme-test: $file:$line: link \`$target\` points to a missing file" >&2
      bad=1
    fi
  done < <(markdown_links "${files[@]}")
  [ "$bad" -eq 0 ] || return 1
  echo "readme-test: $count relative links of ${files[*]} point to files inside the repository"
}

# host:port of a loopback http URL; refuses any other host.
url_authority() {
  local authority=${1#http://}
  authority=${authority%%/*}
  case $authority in
    127.0.0.1:* | localhost:*) echo "$authority" ;;
    127.0.0.1 | localhost) echo "$authority:80" ;;
    *) echo "readme-test: server URLs must be http://127.0.0.1:PORT/…, not \`$1\`" >&2; return 1 ;;
  esac
}

port_taken() { (exec 3<>"/dev/tcp/${1%%:*}/${1##*:}") 2>/dev/null; }

# --- The blocks' shell ---------------------------------------------------------------------
# Runs as `readme-test.sh --blocks WORKDIR` in a session of its own, with its output appended to
# WORKDIR/output.log. Blocks are sourced at top level, so everything of the script's own here is
# named __rt_*: a block cannot clash with it by accident.

__rt_say() { echo "readme-test: $*"; }

# Records the failure for the caller and stops.
__rt_fail() {
  __rt_say "FAILED at $__rt_where: $*"
  echo "$__rt_where: $*" >"$__rt_work/failed"
  exit 1
}

__rt_on_exit() {
  local status=$?
  if [ "$status" -ne 0 ] && [ ! -e "$__rt_work/failed" ]; then
    local where=$__rt_where message empty=""
    if [ -n "$__rt_err_line" ]; then
      where="README.md:$((__rt_line + __rt_err_line)) ($__rt_heading)"
      # An empty `export NAME=$(…)` earlier in the block is the likelier cause.
      empty=$(__rt_empty_assignments "$__rt_code" "$__rt_err_line" | head -n 1)
    fi
    message="\`${__rt_err_command:-the block}\` exited with status $status"
    if [ -n "$empty" ]; then
      message="\$$empty is empty (the command in its \$(…) printed nothing); then $message"
    fi
    __rt_say "FAILED at $where: $message"
    echo "$where: $message" >"$__rt_work/failed"
  fi
}

# The output since byte offset $1 of the log.
__rt_output_since() { tail -c +"$(($1 + 1))" "$__rt_log"; }

__rt_log_size() { stat -c %s "$__rt_log"; }

# Fails when the output since $1 carries the error envelope, unless the block expects errors.
__rt_check_envelope() {
  [ "$__rt_errors_ok" = no ] || return 0
  local found
  found=$(__rt_output_since "$1" | grep -m 1 -F '"error":' || true)
  [ -z "$found" ] || __rt_fail "its output contains the API's error envelope: ${found:0:300}"
}

# Waits up to EXPECT_TIMEOUT seconds for every expected text in the output since $1.
__rt_check_expected() {
  local text deadline=$((SECONDS + EXPECT_TIMEOUT))
  for text in "${__rt_expects[@]}"; do
    until [[ $(__rt_output_since "$1") == *"$text"* ]]; do
      __rt_check_envelope "$1"
      [ "$SECONDS" -lt "$deadline" ] ||
        __rt_fail "its output did not show \`$text\` within ${EXPECT_TIMEOUT} s"
      sleep 0.1
    done
  done
}

# The names that the `NAME=$(…)` assignments of block $1 up to its line $2 left empty.
__rt_empty_assignments() {
  local name
  # shellcheck disable=SC2013 # names are single words
  for name in $(sed -nE "1,${2}s/^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=\\\$\\(.*/\\2/p" "$1"); do
    [ -n "${!name:-}" ] || echo "$name"
  done
}

# Every `NAME=$(…)` of the block must have left NAME non-empty (`export NAME=$(…)` hides a
# failure of the command inside).
__rt_check_assignments() {
  local name
  name=$(__rt_empty_assignments "$1" '$' | head -n 1)
  [ -z "$name" ] || __rt_fail "\$$name is empty: the command in its \$(…) printed nothing"
}

# Starts a "terminal 1" block ($1) in a session and process group of its own, with the
# environment this script started with, and waits until every URL (the other arguments) answers.
__rt_server() {
  local code=$1 url authority pid log started=$SECONDS
  shift
  log=$__rt_work/server-$(basename "$code" .sh).log
  for url in "$@"; do
    authority=$(url_authority "$url") || __rt_fail "bad server URL"
    if port_taken "$authority"; then
      __rt_fail "port ${authority##*:} is already in use; stop what listens there and run again"
    fi
  done
  __rt_say "starting it in the background, output in $log"
  # shellcheck disable=SC2016 # expanded by the server's own shell
  setsid env -i "${__rt_env0[@]}" "$BASH" --noprofile --norc -c 'cd "$1" && . "$0"' \
    "$code" "$__rt_root" >"$log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >>"$__rt_work/servers"
  for url in "$@"; do
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
      if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 40 "$log" | sed 's/^/  | /'
        __rt_fail "it stopped before $url answered (its log's tail is above)"
      fi
      if [ $((SECONDS - started)) -ge "$SERVER_TIMEOUT" ]; then
        tail -n 40 "$log" | sed 's/^/  | /'
        __rt_fail "$url did not answer within $SERVER_TIMEOUT s (its log's tail is above)"
      fi
      sleep 0.5
    done
  done
  __rt_say "$* answered after $((SECONDS - started)) s"
  if ! grep -qE '^[[:space:]]*Finished ' "$log"; then
    sed 's/^/  | /' "$log" | head -n 20
    __rt_fail "its log shows no cargo \`Finished\` line: the build must show cargo's progress (no --quiet)"
  fi
}

__rt_blocks() {
  __rt_work=$1
  __rt_log=$__rt_work/output.log
  __rt_where="README.md"
  __rt_root=$PWD
  __rt_line=0 __rt_heading="" __rt_in_block="" __rt_err_line="" __rt_err_command=""
  mapfile -d '' __rt_env0 < <(env -0)
  trap __rt_on_exit EXIT
  # Where a block failed: the line in the block, and the command.
  trap '[ -z "$__rt_in_block" ] || __rt_err_line=$LINENO __rt_err_command=$BASH_COMMAND' ERR
}

# --- The caller ----------------------------------------------------------------------------

# Stops process group $1: TERM, then KILL if it is still there after 20 s.
stop_group() {
  kill -TERM -- "-$1" 2>/dev/null || return 0
  local _
  for _ in $(seq 100); do
    kill -0 -- "-$1" 2>/dev/null || return 0
    sleep 0.2
  done
  echo "readme-test: process group $1 ignored SIGTERM; killing it" >&2
  kill -KILL -- "-$1" 2>/dev/null || true
}

work="" driver="" tail_pid=""
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  [ -z "$driver" ] || stop_group "$driver"
  if [ -n "$work" ] && [ -f "$work/servers" ]; then
    while read -r pid; do stop_group "$pid"; done <"$work/servers"
  fi
  [ -z "$tail_pid" ] || kill "$tail_pid" 2>/dev/null || true
  if [ -n "$work" ]; then
    if [ "$status" -ne 0 ] && [ -s "$work/output.log" ]; then
      echo "readme-test: logs kept in $work" >&2
    else
      rm -rf "$work"
    fi
  fi
  exit "$status"
}

main() {
  local started=$SECONDS meta url authority status=0
  check_links || { echo "readme-test: FAILED: README.md or docs/ links to a missing file (above)"; return 1; }

  work=$(mktemp -d "${TMPDIR:-/tmp}/readme-test.XXXXXX")
  trap cleanup EXIT
  trap 'echo "readme-test: interrupted" >&2; exit 130' INT
  trap 'echo "readme-test: terminated" >&2; exit 143' TERM
  split_blocks "$work/blocks"

  # Every server's port must be free before anything starts.
  for meta in "$work"/blocks/*.meta; do
    # shellcheck disable=SC2013 # one URL per word
    for url in $(sed -n 's/^server //p' "$meta"); do
      authority=$(url_authority "$url")
      if port_taken "$authority"; then
        echo "readme-test: port ${authority##*:} is already in use (README.md:$(sed -n 's/^line //p' "$meta") serves on it); stop what listens there and run again" >&2
        return 1
      fi
    done
  done

  # A newcomer's environment, on a fresh database.
  unset DATABASE_URL MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES MAKE_TERMOUT MAKE_TERMERR
  unset "${!CHANNELD_@}"
  export CHANNELD_DEV_DB=$DEV_DB
  psql -q "$(scripts/dev-db.sh postgres)" -c "DROP DATABASE IF EXISTS $DEV_DB WITH (FORCE)"
  echo "readme-test: fresh database $DEV_DB; running README.md's shell blocks in order"

  : >"$work/output.log"
  setsid "$BASH" "$0" --blocks "$work" >>"$work/output.log" 2>&1 </dev/null &
  driver=$!
  tail -n +1 -s 0.2 -f --pid="$driver" "$work/output.log" &
  tail_pid=$!
  # A block that never ends (a server without its directive, say) fails after BLOCK_TIMEOUT.
  local since where
  while kill -0 "$driver" 2>/dev/null; do
    if [ -f "$work/current" ] && read -r since where <"$work/current" &&
      [ $(($(date +%s) - since)) -ge "$BLOCK_TIMEOUT" ]; then
      echo "$where: still running after $BLOCK_TIMEOUT s (a long-running \"terminal 1\" block needs <!-- readme-test: server URL -->)" >"$work/failed"
      stop_group "$driver"
      break
    fi
    sleep 0.5
  done
  wait "$driver" || status=$?
  wait "$tail_pid" || true
  tail_pid=""

  local elapsed="$(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s"
  local ran servers skipped
  ran=$(grep -c '^run ' "$work/done" 2>/dev/null || true)
  servers=$(grep -c '^server ' "$work/done" 2>/dev/null || true)
  skipped=$(grep -c '^skip ' "$work/done" 2>/dev/null || true)
  if [ "$status" -ne 0 ]; then
    local log
    for log in "$work"/server-*.log; do
      [ -e "$log" ] || continue
      echo "readme-test: last lines of $log:"
      tail -n 15 "$log" | sed 's/^/  | /'
    done
    echo "readme-test: FAILED at $(cat "$work/failed" 2>/dev/null || echo "an unknown place (status $status)") after $elapsed"
    return 1
  fi
  check_make_key || return 1
  echo "readme-test: passed: $ran blocks ran, $servers servers answered, $skipped skipped, links ok, \`make key\` prints only a key, in $elapsed"
}

# `export KEY=$(make key)` must not depend on where cargo's or make's own lines go: stdout is
# the key and nothing else, and with the binary built, stderr is silent too.
check_make_key() {
  local out err
  out=$(make key NAME=readme-key-check 2>"$work/key.err") || {
    echo "readme-test: FAILED: make key exited non-zero:"; cat "$work/key.err"; return 1; }
  err=$(cat "$work/key.err")
  if ! [[ $out =~ ^sk_live_[A-Za-z0-9]+_[A-Za-z0-9]+$ ]]; then
    echo "readme-test: FAILED: make key printed more than a key on stdout: ${out:0:300}"
    return 1
  fi
  if [ -n "$err" ]; then
    echo "readme-test: FAILED: make key printed on stderr although nothing needed building: ${err:0:300}"
    return 1
  fi
}

if [ "${1:-}" != --blocks ]; then
  main
  exit
fi

# --blocks WORKDIR: the blocks' shell. What follows runs at top level, so that blocks do too.
__rt_blocks "$2"
for __rt_meta in "$__rt_work"/blocks/*.meta; do
  __rt_code=${__rt_meta%.meta}.sh
  __rt_line=$(sed -n 's/^line //p' "$__rt_meta")
  __rt_heading=$(sed -n 's/^heading //p' "$__rt_meta")
  __rt_where="README.md:$__rt_line ($__rt_heading)"
  __rt_servers=$(sed -n 's/^server //p' "$__rt_meta")
  __rt_skip=$(sed -n 's/^skip //p' "$__rt_meta")
  mapfile -t __rt_expects < <(sed -n 's/^expect //p' "$__rt_meta")
  __rt_errors_ok=no
  if grep -qx 'errors-expected' "$__rt_meta"; then __rt_errors_ok=yes; fi
  if [ -n "$__rt_servers" ] && { [ -n "$__rt_skip" ] || [ ${#__rt_expects[@]} -gt 0 ] || [ $__rt_errors_ok = yes ]; }; then
    __rt_fail "a server block takes no other directive"
  fi

  if [ -n "$(tail -c 1 "$__rt_log")" ]; then echo; fi
  echo
  if [ -n "$__rt_skip" ]; then
    __rt_say "skipping $__rt_where: $__rt_skip"
    sed 's/^/  | /' "$__rt_code"
    echo "skip $__rt_where" >>"$__rt_work/done"
    continue
  fi
  if [ -n "$__rt_servers" ]; then
    __rt_say "$__rt_where, a server (terminal 1):"
  else
    __rt_say "$__rt_where:"
  fi
  sed 's/^/  | /' "$__rt_code"
  if [ -n "$__rt_servers" ]; then
    # shellcheck disable=SC2086 # one URL per word
    __rt_server "$__rt_code" $__rt_servers
    echo "server $__rt_where" >>"$__rt_work/done"
    continue
  fi

  __rt_offset=$(__rt_log_size)
  echo "$(date +%s) $__rt_where" >"$__rt_work/current"
  __rt_in_block=1
  set -euo pipefail
  shopt -s inherit_errexit
  # shellcheck disable=SC1090
  source "$__rt_code"
  __rt_in_block=""
  rm -f "$__rt_work/current"
  __rt_check_assignments "$__rt_code"
  __rt_check_expected "$__rt_offset"
  __rt_check_envelope "$__rt_offset"
  echo "run $__rt_where" >>"$__rt_work/done"
done
