#!/usr/bin/env bash
# On a lent GPU: install, check the fast path against the reference on CUDA, check that a decode step
# never syncs with the host, and time the targets of docs/performance.md (tables, CSV, JSON, profiles
# under $OUT). A device command may run 10 minutes and a task has 15 minutes of device time in all,
# so the work is in two calls (durations not measured yet: give each timeout_s 600, the second only if
# time is left):
#   OUT=$OUT bash model/device_check.sh               tiny CUDA checks + decode-step checks + the fp16 7B speed run
#   OUT=$OUT PART=compile bash model/device_check.sh  the 7B decode step eager vs --compile, bf16 7B speed run rows a-d
# QUICK=1: the tiny checks only (about a minute). E2E=N: end-to-end items of the fp16 speed run (default 64).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/flexeval-device}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

if [ "${PART:-main}" = compile ]; then
  echo "== 7B shape, fp16, centre: the decode step captured (torch.compile reduce-overhead) vs eager, b1 and b16 =="
  for b in 1 16; do
    timeout 240 python3 -m flexeval.speed.decode_check --arch llava-1.5-7b --device cuda --dtype float16 \
      --batch "$b" --max-new-tokens 8 --repeat 3 --compile 2>&1 | tail -3 | tee -a "$OUT/decode-7b-compile.txt"
  done
  echo "== LLaVA-1.5-7B shape, random weights, bf16, no end to end =="
  timeout 300 flexeval speed --arch llava-1.5-7b --device cuda --dtype bfloat16 --e2e-items 0 --repeat 2 \
    --max-batch 32 --out "$OUT/speed-7b-bf16" > "$OUT/speed-7b-bf16.log" 2>&1
  grep -v "^\[" "$OUT/speed-7b-bf16.log" | tee "$OUT/speed-7b-bf16.txt"
  exit 0
fi

echo "== counted TFLOP per sample, 7B shape (no model run): centre generation must be <= 1.45x none =="
flexeval speed --arch llava-1.5-7b --count-only --max-new-tokens 8 | tee "$OUT/count-7b.txt"

echo "== tiny shape, float32, CUDA: the cache's equivalence tests on CUDA (every selection mode, early EOS) =="
FLEXEVAL_TEST_DEVICE=cuda timeout 240 python3 -m pytest -x -q -p no:warnings tests/test_hires_cache.py -k "not compiles" 2>&1 | tail -3

echo "== tiny shape, float32, CUDA: a decode step never syncs (torch.cuda.set_sync_debug_mode error) =="
timeout 120 python3 -m flexeval.speed.decode_check --arch tiny --device cuda --dtype float32 --batch 4 \
  --max-new-tokens 8 --repeat 1 2>&1 | tail -2 | tee "$OUT/decode-tiny.txt"

echo "== tiny shape, float32, CUDA: fast vs reference check + every speed row (structure) =="
timeout 180 flexeval speed --arch tiny --device cuda --dtype float32 --max-batch 4 --stage-batch 4 --repeat 1 \
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

echo "== LLaVA-1.5-7B shape, random weights, fp16: the speed run (targets: a/c vs_reference, vs_none, d notes, e idle) =="
timeout 420 flexeval speed --arch llava-1.5-7b --device cuda --dtype float16 --e2e-items "${E2E:-64}" --profile \
  --max-batch 32 --out "$OUT/speed-7b-fp16" > "$OUT/speed-7b-fp16.log" 2>&1
grep -v "^\[" "$OUT/speed-7b-fp16.log" | tee "$OUT/speed-7b-fp16.txt"
tail -3 "$OUT/speed-7b-fp16.log"  # the last progress lines: where it was if the timeout cut it
rm -rf "$OUT"/speed-*/e2e-data  # generated images: not worth bringing back
