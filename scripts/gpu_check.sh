#!/usr/bin/env bash
# What a person with a GPU runs to trust vitkit there, in at most about 10 minutes on one GPU:
#   1. tests/test_cuda.py (CPU parity of every position-embedding variant and the hybrid, no host syncs,
#      the fused kernel, bf16 and fp16 training, exact resume, nccl + FSDP, every inference command);
#   2. the CPU suite's model, device and training tests with the GPU visible;
#   3. benchmarks/throughput.py on the GPU: ViT-B/16 at 224 px, bf16 and fp16, inference and training,
#      against Hugging Face ViT with SDPA in the same rounds;
#   4. with 2+ GPUs, a short DDP run under torchrun on all of them.
# Then one summary. Usage: bash scripts/gpu_check.sh [LOG_DIR]   (default: gpu_check_logs/)
# Exit status: 0 all passed, 1 something failed, 2 no CUDA GPU is visible (nothing was checked).
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n 2,11p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
log=${1:-gpu_check_logs}
python=${PYTHON:-python}
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); nothing checked"
  exit 2
fi
mkdir -p "$log"
gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
name=$("$python" -c "import torch; print(torch.cuda.get_device_name(0))")
summary=()
failed=0
step() {  # step NAME COMMAND...: run it, log it, remember the outcome and the time
  local what=$1; shift
  local t0=$SECONDS
  if "$@" >"$log/$what.log" 2>&1; then status=PASS; else status=FAIL; failed=1; fi
  summary+=("$(printf '%-5s %-28s %4d s  %s' "$status" "$what" $((SECONDS - t0)) "$log/$what.log")")
  echo "${summary[-1]}"
}
echo "gpu_check: $gpus GPU(s), $name; torch $("$python" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
step cuda_tests "$python" -m pytest -q -rs tests/test_cuda.py
step cpu_tests_gpu_visible "$python" -m pytest -q tests/test_models.py tests/test_devices.py tests/test_train.py -m "not slow"
for dtype in bf16 fp16; do
  step "throughput_b16_$dtype" "$python" benchmarks/throughput.py --device cuda --dtype "$dtype" --models b16 \
    --impls vitkit,vitkit_compiled,hf_sdpa --modes infer_b1,infer_b32,train_b32 --rounds 3 --min-seconds 2 \
    --no-memory --out "$log/throughput_b16_$dtype.json"
done
if [ "$gpus" -ge 2 ]; then
  step "ddp_${gpus}_gpus" "$python" -m torch.distributed.run --standalone --nproc_per_node "$gpus" -m vitkit train \
    --device cuda --epochs 2 --batch-size $((64 * gpus)) --out "$log/ddp_run" --no-progress
fi
echo
echo "gpu_check summary ($name x $gpus):"
printf '  %s\n' "${summary[@]}"
for dtype in bf16 fp16; do
  [ -f "$log/throughput_b16_$dtype.md" ] && { echo "  ViT-B/16 $dtype:"; sed 's/^/    /' "$log/throughput_b16_$dtype.md"; }
done
exit $failed
