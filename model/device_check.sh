#!/usr/bin/env bash
# On a lent GPU: install, check the fast path against the reference on CUDA, and run
# `flexeval speed` (tables, CSV, JSON, profiles under $OUT). A device command may run 10 minutes,
# so the work is in two calls (timings not yet measured: keep timeout_s at 600):
#   bash model/device_check.sh             the tiny CUDA checks + the full fp16 7B speed run
#   PART=bf16 bash model/device_check.sh   the bf16 7B speed run (no end to end)
# QUICK=1: the tiny checks only (about a minute). E2E=N: end-to-end items of the fp16 speed run (256).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/flexeval-device}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
if [ "${PART:-main}" = bf16 ]; then
  echo "== LLaVA-1.5-7B shape, random weights, bf16 (no end to end: the data path does not depend on the dtype) =="
  flexeval speed --arch llava-1.5-7b --device cuda --dtype bfloat16 --e2e-items 0 --repeat 2 \
    --out "$OUT/speed-7b-bf16" 2>&1 | grep -v "^\[" | tee "$OUT/speed-7b-bf16.txt"
  exit 0
fi

echo "== tiny shape, float32, CUDA: fast vs reference check + every speed row (structure) =="
flexeval speed --arch tiny --device cuda --dtype float32 --max-batch 4 --stage-batch 4 --repeat 1 \
  --e2e-items 8 --out "$OUT/speed-tiny-fp32" 2>&1 | grep -E "^check|^flexeval speed|error" || echo "tiny speed run FAILED"

echo "== harness on CUDA (tiny model, float32) vs CPU predictions carried in demo/ =="
if [ -d demo/results ]; then
  flexeval run --bench vstar --model demo/llava-tiny-flexattn --data-dir demo/data/vstar --out "$OUT/gpu" --device cuda \
    --dtype float32 --batch-size 4 -q --tag cuda 2>&1 | tail -4
  python3 - "$OUT" <<'PY'
import json, sys
cpu = [json.loads(l) for l in open("demo/results/llava-tiny-flexattn/vstar/predictions.jsonl")]
gpu = [json.loads(l) for l in open(sys.argv[1] + "/gpu/cuda/vstar/predictions.jsonl")]
d = max(abs(a - b) / abs(a) for x, y in zip(cpu, gpu) for a, b in zip(x["option_nll"], y["option_nll"]))
print("cpu vs cuda: same predictions", [x["prediction"] for x in cpu] == [y["prediction"] for y in gpu],
      "max rel NLL diff", f"{d:.2e}")
PY
fi
[ "${QUICK:-0}" = 1 ] && exit 0

echo "== LLaVA-1.5-7B shape, random weights, fp16: the full speed run (end to end: ${E2E:-256} items) =="
flexeval speed --arch llava-1.5-7b --device cuda --dtype float16 --e2e-items "${E2E:-256}" --profile \
  --out "$OUT/speed-7b-fp16" 2>&1 | grep -v "^\[" | tee "$OUT/speed-7b-fp16.txt"
rm -rf "$OUT"/speed-*/e2e-data  # generated images: not worth bringing back
