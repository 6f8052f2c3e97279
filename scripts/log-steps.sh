#!/usr/bin/env bash
# Sourced by scripts/run.sh and scripts/test.sh: runs each step with its
# output appended to one log file ($VMEP_LOG_FILE), so the terminal shows a
# short summary; a failed step prints the log's last 80 lines and its path.

# log_start FILE: starts (truncates) the log.
log_start() {
  VMEP_LOG_FILE=$1
  mkdir -p "$(dirname "$VMEP_LOG_FILE")"
  : >"$VMEP_LOG_FILE"
}

# log_fail TITLE: the tail of the log, the path, exit 1.
log_fail() {
  echo "-- last 80 lines of $VMEP_LOG_FILE --"
  tail -n 80 "$VMEP_LOG_FILE"
  echo "FAILED: $1 (full log: $VMEP_LOG_FILE)"
  exit 1
}

# log_step TITLE COMMAND...: runs COMMAND into the log; stops on failure.
log_step() {
  local title=$1
  shift
  echo "== $title"
  echo "== $title: $*" >>"$VMEP_LOG_FILE"
  "$@" >>"$VMEP_LOG_FILE" 2>&1 || log_fail "$title"
}

# since MARK PATTERN: the count of log lines after line MARK that match
# the extended regex PATTERN (0 when none; a count, not grep -q, so that a
# match early in a long log cannot end the pipe's reader with SIGPIPE).
since() {
  tail -n +"$(($1 + 1))" "$VMEP_LOG_FILE" | grep -cE "$2" || true
}

# log_ctest TITLE DIR CTEST_ARGS...: runs ctest in DIR into the log and
# prints its closing "N% tests passed, N tests failed out of M" line (and
# the skipped count), on success and on failure.
log_ctest() {
  local title=$1 dir=$2 rc=0 mark last
  shift 2
  echo "== $title"
  mark=$(wc -l <"$VMEP_LOG_FILE")
  echo "== $title: ctest $*" >>"$VMEP_LOG_FILE"
  (cd "$dir" && ctest "$@") >>"$VMEP_LOG_FILE" 2>&1 || rc=$?
  # LeakSanitizer's tracer thread sometimes crashes while it stops a
  # process's threads at exit ("Tracer caught signal 11", then "has
  # encountered a fatal error"): no leak was found or reported. The failed
  # tests then run once more; a leak report, or any other failure, stands.
  last=$mark
  if [ "$rc" != 0 ] &&
    [ "$(since "$mark" 'LeakSanitizer has encountered a fatal error')" != 0 ] &&
    [ "$(since "$mark" 'LeakSanitizer: detected memory leaks')" = 0 ]; then
    echo "== $title: LeakSanitizer's tracer crashed (no leak reported): the failed tests once more" |
      tee -a "$VMEP_LOG_FILE"
    last=$(wc -l <"$VMEP_LOG_FILE")
    rc=0
    (cd "$dir" && ctest --rerun-failed "$@") >>"$VMEP_LOG_FILE" 2>&1 || rc=$?
  fi
  local skipped
  skipped=$(since "$mark" '^[[:space:]]*[0-9]+ - .*\((Skipped|Not Run)\)$')
  if [ "$rc" != 0 ]; then
    tail -n 80 "$VMEP_LOG_FILE"
    # The tail holds ctest's summary; say why each test failed, last, so a
    # reader who sees only the end of the output still learns it (after a
    # rerun, the rerun's failures).
    echo "== $title: the failures' own lines"
    tail -n +"$((last + 1))" "$VMEP_LOG_FILE" |
      grep -E ': FAIL: |ERROR: AddressSanitizer|runtime error: |LeakSanitizer: detected|Test +#[0-9]+: .*(Failed|Timeout|Exception)' |
      head -n 30 || true
    echo "full log: $VMEP_LOG_FILE"
  fi
  tail -n +"$((mark + 1))" "$VMEP_LOG_FILE" | grep -E 'tests passed, ' | tail -n 1 || true
  [ "$skipped" = 0 ] || echo "   ($skipped skipped: see $VMEP_LOG_FILE for why)"
  [ "$rc" = 0 ] || { echo "FAILED: $title (full log: $VMEP_LOG_FILE)"; exit 1; }
}
