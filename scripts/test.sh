#!/usr/bin/env bash
# Run the test suite (CPU: unit, engine and server tests; GPU tests skip without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
