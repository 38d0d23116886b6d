#!/usr/bin/env bash
# The whole path on one CPU machine, each stage announced:
#   checkpoint -> ONNX vision encoder + TensorRT-LLM checkpoint -> CPU Triton repository
#   -> tritonserver on 127.0.0.1 (background) -> one gRPC question about an image -> answer -> stop.
#
# Usage: scripts/quickstart.sh [MODEL_DIR] [IMAGE] [QUESTION]
#   MODEL_DIR  HF NVLM-D checkpoint (default: the bundled demo model nvlm_deploy/demo/nvlm-d-demo;
#              without it, a tiny random checkpoint is written with `nvlm-deploy tiny`)
#   IMAGE      image file (default: the bundled wide sample nvlm_deploy/demo/samples/striped_wide.png,
#              which dynamic tiling cuts into 3 tiles + thumbnail)
#   QUESTION   default "Which side has the striped square?" (a demo task answerable only through tiles)
# Environment: WORK (output root, default engines/quickstart), DTYPE (fp32 default: exact on CPU),
#   NVLM_DEPLOY (the CLI, default .venv/bin/nvlm-deploy or nvlm-deploy on PATH), MAX_TOKENS (default 32).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CLI="${NVLM_DEPLOY:-}"
if [[ -z "$CLI" ]]; then
  if [[ -x .venv/bin/nvlm-deploy ]]; then CLI=.venv/bin/nvlm-deploy; else CLI=nvlm-deploy; fi
fi
PY="$(dirname "$(command -v "$CLI")")/python"
[[ -x "$PY" ]] || PY=python3
WORK="${WORK:-engines/quickstart}"
DTYPE="${DTYPE:-fp32}"
MAX_TOKENS="${MAX_TOKENS:-32}"
MODEL="${1:-nvlm_deploy/demo/nvlm-d-demo}"
IMAGE="${2:-}"
QUESTION="${3:-Which side has the striped square?}"

stage() { printf '\n==> [%s] %s\n' "$1" "$2"; }

stage 1/6 "checkpoint"
if [[ ! -f "$MODEL/config.json" ]]; then
  if [[ -n "${1:-}" ]]; then echo "error: $MODEL has no config.json (not an NVLM-D checkpoint)" >&2; exit 1; fi
  MODEL="$WORK/tiny-nvlm-d"
  echo "the demo checkpoint is not here; writing a tiny random one to $MODEL (its answers are noise)"
  [[ -f "$MODEL/config.json" ]] || "$CLI" tiny --out "$MODEL"
fi
echo "model: $MODEL"
if [[ -z "$IMAGE" ]]; then
  IMAGE=nvlm_deploy/demo/samples/striped_wide.png
  [[ -f "$IMAGE" ]] || IMAGE=""
  if [[ -z "$IMAGE" ]]; then
    IMAGE="$WORK/red-circle.png"
    mkdir -p "$WORK"
    "$PY" -c "from PIL import Image, ImageDraw; im = Image.new('RGB', (448, 448), 'white'); ImageDraw.Draw(im).ellipse([100, 100, 300, 300], fill='red'); im.save('$IMAGE')"
  fi
fi
echo "image: $IMAGE"

TARGET="$WORK/$(basename "$MODEL")/cpu-$DTYPE"
stage 2/6 "vision encoder -> ONNX ($TARGET/onnx)"
"$CLI" convert vision --model "$MODEL" --out "$TARGET" --dtype "$DTYPE" --force
stage 3/6 "decoder -> TensorRT-LLM checkpoint ($TARGET/trtllm_checkpoint)"
"$CLI" convert llm --model "$MODEL" --out "$TARGET" --dtype "$DTYPE" --force
stage 4/6 "CPU Triton model repository ($TARGET/model_repository)"
"$CLI" package --engines "$TARGET" --runtime cpu --out "$TARGET/model_repository" --model "$MODEL" --force

stage 5/6 "tritonserver on 127.0.0.1 (background)"
read -r GRPC HTTP < <("$PY" -c "from nvlm_deploy.serve.server import free_port as f; print(f(), f())")
LOG="$WORK/serve.log"
"$CLI" serve "$TARGET/model_repository" --grpc-port "$GRPC" --http-port "$HTTP" > "$LOG" 2>&1 &
SERVE_PID=$!
stop() { if kill -0 "$SERVE_PID" 2>/dev/null; then kill -TERM "$SERVE_PID"; wait "$SERVE_PID" || true; fi; }
trap stop EXIT
for _ in $(seq 1 600); do
  if grep -q '^ready:' "$LOG"; then break; fi
  if ! kill -0 "$SERVE_PID" 2>/dev/null; then cat "$LOG" >&2; echo "error: the server did not start" >&2; exit 1; fi
  sleep 0.5
done
grep '^ready:' "$LOG" || { cat "$LOG" >&2; echo "error: the server was not ready in time" >&2; exit 1; }

stage 6/6 "gRPC question: $QUESTION"
echo "answer:"
"$CLI" chat --url "127.0.0.1:$GRPC" --image "$IMAGE" --max-tokens "$MAX_TOKENS" --stream "$QUESTION"
stop
trap - EXIT
echo "server stopped; the repository stays in $TARGET/model_repository (serve it again: $CLI serve $TARGET/model_repository)"
