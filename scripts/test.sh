#!/usr/bin/env bash
# Sets up a fresh Debian machine (as root) and runs the whole test suite: lint (ruff), types
# (mypy), unit tests, and integration tests against a real containerd + runc that the harness
# starts under a temporary directory. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VNODE_EXTRAS=test,lint scripts/setup.sh

echo "== ruff"
.venv/bin/ruff check vnode tests integration bench
.venv/bin/ruff format --check vnode tests integration bench
echo "== import layers"
.venv/bin/lint-imports --no-cache
echo "== mypy"
.venv/bin/mypy vnode integration bench
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
