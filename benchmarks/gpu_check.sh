#!/usr/bin/env bash
# The GPU path in one go, for a machine with a CUDA device (the `device` tool's, or your own); within 8 minutes on
# one H100-class GPU. Prints everything; writes the GPU blocks of benchmarks/README.md (train_throughput and
# serve_load rewrite their own blocks) and leaves the raw output in ${OUT:-benchmarks/results}/gpu_check.log.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, after `make install`
#
# 1. the CUDA tests (pytest marker `gpu`: eager float32 against the CPU, bfloat16, torch.compile default and
#    reduce-overhead, fused Adam, a GPU-trained generator served on a CPU, NCCL on two GPUs when there are two);
# 2. training throughput on the GPU against the reference loop on the same GPU, every mode, then the seeds'
#    300-epoch recipe timed end to end (the targets: under 60 s, at least 20× the reference loop);
# 3. serving throughput with the render process on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
out=${OUT:-benchmarks/results}
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
step() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)" | tee -a "$log"; }

step "the GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
$BIN/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.device_count(), 'device(s)')" | tee -a "$log"

step "CUDA tests"
$BIN/pytest -m gpu -p no:cacheprovider -q tests/training/test_cuda_path.py 2>&1 | tee -a "$log"

step "training throughput and the 300-epoch recipe"
$BIN/python -m benchmarks.train_throughput --device cuda --steps 300 --warmup 100 --recipe compiled 2>&1 | tee -a "$log"

step "serving on the GPU"
command -v wrk >/dev/null || { echo "wrk is missing (Debian: apt-get install wrk); serving not measured" | tee -a "$log"; exit 0; }
$BIN/python -m benchmarks.serve_load --duration 5 --warmup 1 --clients 1,64 --cases ceiling,ganserve \
  --set GANSERVE_DEVICE=cuda 2>&1 | tee -a "$log"
step "done"
