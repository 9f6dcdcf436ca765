#!/usr/bin/env bash
# The README's test command: set up, check the generated code, lint, and run
# every test (unit, then integration with a real tritonserver and gRPC server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m marrowdx.protogen --check
.venv/bin/ruff check server clients training tests
.venv/bin/python -m pytest tests -q -p no:cacheprovider
