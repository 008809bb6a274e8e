#!/usr/bin/env bash
# Regenerate the Python protobuf / gRPC modules from protos/*.proto.
# Run from anywhere; uses $PYTHON (default: the repo's .venv, else python3).
# grpcio-tools must be 1.62.3 (newer versions emit code that needs protobuf>=5).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
  protos/ml_inference.proto protos/pythonml.proto protos/kserve/grpc_service.proto
