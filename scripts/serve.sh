#!/usr/bin/env bash
# Set up (if needed) and start the service on its built-in defaults (127.0.0.1:50051).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python run.py "$@"
