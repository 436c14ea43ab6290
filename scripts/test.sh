#!/usr/bin/env bash
# Sets up a fresh Debian machine (as root) and runs the whole test suite in phases: setup, lint
# (ruff), import layers, types (mypy), unit tests, integration tests against a real containerd +
# runc that the harness starts under a temporary directory. Each phase prints a start line, its
# outcome and duration; a phase quiet for a minute says it is still running; the pytest phases print
# their counts as they go (tests/progress.py). A failing phase ends the run with its exit status,
# after a summary line; only a failing unit phase lets the integration phase run first (one pytest
# run used to report both). Arguments, when given, go to one pytest phase instead of the two.
set -euo pipefail
cd "$(dirname "$0")/.."

HEARTBEAT=${VNODE_TEST_HEARTBEAT:-60}  # seconds of silence before "still running"
started=$SECONDS
done_phases=()
failed_rc=0  # the first failure's status, of a phase that let the next ones run
watcher=""  # the pid of the running phase's "still running" loop
trap '[ -z "$watcher" ] || kill "$watcher" 2>/dev/null || true' EXIT  # also when the run is stopped

stamp() { date -u +%H:%M:%S; }
took() { local s=$(($1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# phase NAME COMMAND...: runs the command with a start line, a "still running" line every
# HEARTBEAT seconds of its run (unless beat=no: pytest phases print their own progress), and an
# outcome line; a failure ends the script with its status (with keep_going=yes: at the end).
phase() {
    local name=$1 begin=$SECONDS rc=0
    shift
    echo "== $name: start at $(stamp)"
    if [ "${beat:-yes}" = yes ]; then
        (  # sleep holds no pipe open, so a sleep outliving the watcher never delays the log's end
            while sleep "$HEARTBEAT" </dev/null >/dev/null 2>&1; do
                echo "== $name: still running at $(stamp) ($(took SECONDS-begin))"
            done
        ) &
        watcher=$!
    fi
    "$@" || rc=$?
    if [ -n "$watcher" ]; then
        kill "$watcher" 2>/dev/null || true
        wait "$watcher" 2>/dev/null || true
        watcher=""
    fi
    if ((rc == 0)); then
        echo "== $name: ok in $(took SECONDS-begin)"
        done_phases+=("$name ok $(took SECONDS-begin)")
    else
        echo "== $name: FAILED (exit status $rc) in $(took SECONDS-begin)"
        done_phases+=("$name FAILED $(took SECONDS-begin)")
        ((failed_rc)) || failed_rc=$rc
        if [ "${keep_going:-no}" != yes ]; then
            summary
            exit "$failed_rc"
        fi
    fi
}

summary() {
    local joined
    joined=$(printf '%s, ' "${done_phases[@]}")
    echo "== test.sh: ${joined%, }; total $(took SECONDS-started)"
}

lint() {  # (set -e does not apply inside a command that is tested: hence &&)
    .venv/bin/ruff check vnode tests integration bench &&
        .venv/bin/ruff format --check vnode tests integration bench
}

pytest() {
    local label=$1
    shift
    .venv/bin/python -m pytest -q -p no:cacheprovider -p tests.progress --progress=30 --progress-label="$label" "$@"
}

phase setup env VNODE_EXTRAS=test,lint scripts/setup.sh
phase lint lint
phase "import layers" .venv/bin/lint-imports --no-cache
phase types .venv/bin/mypy vnode integration bench
if (($#)); then
    beat=no phase pytest pytest pytest "$@"
else
    beat=no keep_going=yes phase unit pytest unit tests/unit
    beat=no phase integration pytest integration tests/integration
fi
summary
exit "$failed_rc"
