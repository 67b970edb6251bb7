#!/usr/bin/env bash
# One call on a lent GPU: install, check the fast path against the reference on CUDA, time it, and
# run the harness on the tiny model (compared with CPU predictions carried in demo/).
# Usage there: bash model/device_check.sh   (writes JSON/logs under $OUT; QUICK=1 skips the 7B timing)
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/flexeval-device}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
echo "== tiny model, float32, CUDA: fast vs reference =="
flexeval model speed --size tiny --device cuda --dtype float32 --batch 5 --repeat 2 --out "$OUT/speed_tiny_fp32.json" 2>&1 | tail -4
echo "== harness on CUDA (tiny model, float32) vs CPU predictions =="
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
[ "${QUICK:-0}" = 1 ] && exit 0  # QUICK=1: correctness only, no 7B timing
echo "== LLaVA-1.5-7B shape, random weights, fp16 =="
flexeval model speed --size 7b --device cuda --dtype float16 --batch 8 --repeat 5 --out "$OUT/speed_7b_fp16.json"
echo "== LLaVA-1.5-7B shape, random weights, bf16 =="
flexeval model speed --size 7b --device cuda --dtype bfloat16 --batch 8 --repeat 3 --out "$OUT/speed_7b_bf16.json" 2>&1 | tail -20
