#!/usr/bin/env bash
# The GPU measurements still open (docs/benchmarks.md), in one call that ends by fixed deadlines (~9.5 min in all).
# Usage on a GPU machine, from the repository root:  OUT=/some/dir bash scripts/gpu_checks.sh
# (the lent H100 image lacks munch: run it with `carry: [".whl"]`, the wheels of docs/benchmarks.md; it installs them)
# Each step writes its JSON to $OUT; a step that would not fit its deadline is skipped and says so, and inside a step
# scripts/benchmark.py skips the modes that no longer fit (--time_budget_s).
set -u
OUT=${OUT:-expr/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import munch" 2>/dev/null; then  # a bare GPU image: the wheels carried in .whl, if any
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
  else
    echo "munch is not installed and no .whl/ folder was carried: see docs/benchmarks.md"; exit 1
  fi
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
S=$SECONDS
step() {  # step DEADLINE_S NAME ARGS...: runs scripts/benchmark.py unless fewer than 40 s are left before DEADLINE_S
  local deadline=$1 name=$2; shift 2
  local left=$((S + deadline - SECONDS))
  if [ "$left" -lt 40 ]; then echo "$name: not run, ${left}s left"; return; fi
  timeout "$left" python3 scripts/benchmark.py --device cuda --time_budget_s $((left - 15)) --json "$OUT/$name.json" "$@" \
    >/dev/null 2>>"$OUT/log.txt"
  echo "$name: rc=$? at $((SECONDS - S))s"
}
# End to end with the real loaders (generated JPEGs at the datasets' sizes, 4 workers per loader as the reference):
# the reference's work, the default, torch.compile, torch.compile with CUDA graphs; each with the one-iteration
# numerics check against the default. The CelebA-HQ run also profiles every mode (top kernels by device time).
step 290 afhq   --preset afhq      --loader real --make_images 48 --compare \
  --modes eager,compile,compile_cudagraphs,reference_work --iters 20 --warmup 3 --flops_per_iter 2.146e13 \
  --min_compile_mode_s 60
step 570 celeba --preset celeba_hq --loader real --make_images 48 --compare \
  --modes eager,compile,compile_cudagraphs --iters 20 --warmup 3 --flops_per_iter 2.104e13 \
  --min_compile_mode_s 60 --profile --profile_iters 2
sed -n '/^StarGAN v2 train_step/,/^$/p;/FAILED\|skipped:\|stopped after\|cut to\|^== /p' "$OUT/log.txt" | head -80
