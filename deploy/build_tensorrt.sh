#!/usr/bin/env bash
# Build TensorRT plans from the committed ONNX models, on the GPU host that will
# serve them (plans are specific to the GPU and TensorRT version).
#   bash deploy/build_tensorrt.sh [fp16]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v trtexec >/dev/null || { echo "trtexec not found: run inside nvcr.io/nvidia/tensorrt or tritonserver image" >&2; exit 1; }
precision=${1:-fp16}
flags=()
[ "$precision" = fp16 ] && flags+=(--fp16)
build() {  # name input max_batch h w
  local out=model_repository/variants/gpu-tensorrt/$1/1
  mkdir -p "$out"
  trtexec --onnx="model_repository/$1/1/model.onnx" --saveEngine="$out/model.plan" \
    --minShapes="$2:1x$4x$5x3" --optShapes="$2:$3x$4x$5x3" --maxShapes="$2:$3x$4x$5x3" "${flags[@]}"
}
build detector IMAGE 16 320 320
build classifier CROPS 256 96 96
echo "plans written under model_repository/variants/gpu-tensorrt/*/1/model.plan"
