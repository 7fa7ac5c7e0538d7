#!/usr/bin/env bash
# GPU check for issue 7: one prepared run on a lent GPU machine (H100/H200), < 5 minutes.
#
# There, only python3 and torch exist (no typer/rich/optuna, no internet), so this uses
# code paths that import nothing but torch and maml_tune.core:
#   1. benchmarks/gpu_correctness.py: float64 meta-gradients on the GPU, every case and
#      strategy, against the CPU float64 reference (tests/core/reference.py); float32 on
#      Omniglot-like strokes against it (TF32 off and on); and the error of bf16/fp16
#      autocast against fp32 (and of fp32/TF32 against float64).
#   2. benchmarks/throughput.py: sinusoid (1 and 5 inner steps), conv4 Omniglot-shaped
#      5-way and 20-way 1-shot, second and first order, every strategy (and batched under
#      bf16) beside the per-task-loop reference, in interleaved windows; peak CUDA memory
#      per implementation; for conv the analytic FLOPs per meta-iteration, achieved TFLOP/s
#      and the share of the device's dense peak (tf32 for fp32 convs, bf16 for bf16).
# Output: one table on stdout; $OUT/correctness.json, $OUT/throughput.json and logs.
#
# With the device tool, from the repository root:
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=420)
#
# `maml-tune bench` itself (typer, rich, optuna and their dependencies) would need wheels
# carried as /work/.library/device/README.md explains: here, in the repo root,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl typer click rich markdown-it-py mdurl pygments \
#     shellingham typing-extensions optuna sqlalchemy greenlet alembic mako markupsafe \
#     colorlog pyyaml tqdm numpy packaging safetensors
# and, there, carry=[".whl"] and prefix the command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
#   python3 -m maml_tune.cli.main bench --family sinusoid --device cuda --json
# (not needed for this check: throughput.py runs the same engine calls).
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
status=0

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  | tee -a "$OUT/gpu.txt"

echo "== 1. correctness (float64 on GPU vs CPU float64 reference; mixed precision) =="
timeout 150 python3 benchmarks/gpu_correctness.py --device cuda --json "$OUT/correctness.json" \
  > "$OUT/correctness.log" 2>&1 || status=1
grep -E "FAIL|all passed|FAILURES|mixed|tf32 on|Error|error" "$OUT/correctness.log" | head -80

echo "== 2. throughput vs the per-task-loop reference (CUDA) =="
timeout 180 python3 benchmarks/throughput.py --device cuda \
  --workloads sinusoid-1step,sinusoid-5step,conv4-5way-1shot,conv4-20way-1shot \
  --orders second,first --strategies vmap,loop,batched,batched/bf16 \
  --seconds 3 --windows 3 --memory --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.log" \
  || status=1

echo "== done in $(( $(date +%s) - started )) s (status $status) =="
exit $status
