#!/usr/bin/env bash
# Wheels that scripts/gpu_check.sh needs on the GPU machine (Python 3.12, torch/lightning/transformers/peft/
# tensorboard already there, no package registry), fetched HERE into .whl/ (ignored by git; carry it to the
# device). The versions are the ones this project is tested with; --no-deps: each needed one is named.
#   bash scripts/gpu_wheels.sh            # -> .whl/*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# hydra-core -> omegaconf -> antlr4-python3-runtime; datasets -> dill, multiprocess (the rest are there)
# pytest -> pluggy, iniconfig, pygments: the tests marked gpu (scripts/gpu_check.py: GPU_TEST_FILES)
BINARY=(hydra-core==1.3.8 omegaconf==2.3.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
        medcalc-bench==1.7.0 pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0 pygments==2.20.0)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${BINARY[@]}"
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) is published as a source archive only: build its
# pure-Python wheel here (py3-none-any, so it installs there unchanged).
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -la .whl
