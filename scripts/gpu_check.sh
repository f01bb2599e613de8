#!/usr/bin/env bash
# GPU readiness check (scripts/gpu_check.py has the details). On the GPU machine, from the repo root:
#
#   bash scripts/gpu_wheels.sh        # HERE, once: hydra-core, omegaconf, antlr4, datasets (+dill,
#                                     # multiprocess), medcalc-bench as wheels in .whl/ (git-ignored)
#   # then, through the device tool, with carry [".whl"] and one command:
#   bash scripts/gpu_check.sh         # -> benchmarks/results/gpu.{md,json}, copied to $OUT with the logs
#
#   bash scripts/gpu_check.sh --prepare-only   # any machine, CPU: compose and check everything, run nothing
#
# The GPU machine has torch, lightning, transformers, peft and tensorboard but no package registry; the
# project is not pip-installed there (its torch pin differs): the repo root goes on PYTHONPATH, and the
# carried wheels are unpacked into /tmp/site. Extra arguments go to scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# carried wheels, only where the packages are missing (the CPU machines have them installed)
if ! "$PY" -c "import hydra, omegaconf, datasets, medcalc, pytest" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
exec "$PY" scripts/gpu_check.py "$@"
