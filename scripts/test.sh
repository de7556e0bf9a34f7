#!/usr/bin/env bash
# Set everything up, then run the linters and the default test suite (slow tests are opt-in:
# `.venv/bin/python -m pytest -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -m "not slow" "$@"
