#!/usr/bin/env bash
# The accelerator figures of benchmarks/README.md, one run (about 8 minutes on one H100):
#   bash benchmarks/gpu.sh OUTDIR
# Needs jaxnls importable (PYTHONPATH=.), gtsam, jaxlie, qdldl, optimistix and jaxopt.
set -u
out=${1:-/tmp}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
step() { echo; echo "\$ $*"; timeout "${STEP_LIMIT:-240}" "$@" 2>&1; }
step python3 benchmarks/posegraph.py --file w10000.graph --repeats 3 \
  --only "gtsam LM (default params),jaxnls Dogleg + SparseDirect,jaxnls GaussNewton + SparseDirect"
step python3 benchmarks/posegraph.py --file w100.graph --batch 64 --repeats 3
step python3 benchmarks/posegraph.py --file w10000.graph --first-poses 1000 --batch 64 --repeats 3 \
  --only "jaxnls Dogleg + SparseDirect"
step python3 benchmarks/bundle.py --repeats 3 --only "jaxnls Dogleg + SchurPCG,jaxnls Dogleg + SparseDirect"
STEP_LIMIT=300 step python3 benchmarks/run.py --only curvefit --sizes 65536 --repeats 3 --json "$out/curvefit.json"
