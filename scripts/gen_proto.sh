#!/bin/sh
# Regenerates the committed Python stubs of the CRI v1 schema.
# The virtual include mapping crishim/api=proto makes protoc see the file as
# crishim/api/runtime/v1/api.proto, so the generated imports are package-absolute
# (from crishim.api.runtime.v1 import api_pb2).
# Usage: scripts/gen_proto.sh [OUTPUT_ROOT]   (default: the repo root)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo}
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3
cd "$repo"
"$python" -m grpc_tools.protoc \
    -Icrishim/api=proto \
    --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
    crishim/api/runtime/v1/api.proto
