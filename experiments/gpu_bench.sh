#!/usr/bin/env bash
# credit's benchmark on Keras's JAX backend, in one call, on a machine that has JAX (a
# GPU's, say) but neither TensorFlow nor a network. It installs nothing but what it
# carries: the Keras wheel (when Keras is missing) and credit itself (this checkout, on
# PYTHONPATH). It writes a markdown table with the backend, library versions and
# devices in its header (experiments.bench).
#
#   pip download keras==3.15.1 --no-deps -d dist/      # here, once: the wheel to carry
#   experiments/gpu_bench.sh                            # there, e.g. the device tool's
#                                                       # run with carry ["dist"]
# Environment:
#   OUT         folder of the table (default results): bench_gpu.md there
#   KERAS_WHEEL the Keras wheel (default: the first dist/keras-*.whl)
#   BENCH_ARGS  arguments of experiments.bench (default: --models a,b,c,d,e --repeats 5)
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-results}"
mkdir -p "$out_dir"
if ! python -c "import keras" 2>/dev/null; then
  wheel="${KERAS_WHEEL:-$(ls dist/keras-*.whl 2>/dev/null | head -n 1 || true)}"
  if [ -z "$wheel" ]; then
    echo "gpu_bench: Keras is not installed and no wheel was carried: run" \
         "'pip download keras --no-deps -d dist/' where there is a network, carry dist/," \
         "or set KERAS_WHEEL." >&2
    exit 2
  fi
  python -m pip install --quiet --no-deps --no-index "$wheel"
fi
missing=$(python -c '
import importlib.util
needed = ["jax", "numpy", "pandas", "absl", "rich", "namex", "h5py", "optree", "ml_dtypes",
          "packaging"]
print(" ".join(m for m in needed if importlib.util.find_spec(m) is None))')
if [ -n "$missing" ]; then
  echo "gpu_bench: missing Python packages: $missing. Carry their wheels and install" \
       "them with pip install --no-deps --no-index." >&2
  exit 2
fi
export KERAS_BACKEND=jax PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import jax; print('gpu_bench: JAX', jax.__version__, jax.devices())"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
python -m experiments.bench --backend jax ${BENCH_ARGS:---models a,b,c,d,e --repeats 5} \
  --out "$out_dir/bench_gpu.md"
