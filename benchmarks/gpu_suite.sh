#!/usr/bin/env bash
# The GPU benchmarks in one run (paper sizes, bf16 autocast; fused scoring also with compiled interaction layers),
# each result as JSON under ${OUT:-outputs/benchmarks/gpu}, the whole output in suite.log, and last the performance
# issue's targets against the results in summary.json (six files: the device tool brings back at most eight). Each
# part has its own time limit so that one slow part cannot take the others' results with it; together at most 8
# minutes, so that a 10-minute device call ends with time to spare.
#
# On the device machine (python3 holds CUDA PyTorch; nothing can be installed from a registry there), after
# `bash benchmarks/gpu_wheels.sh` here:
#     run(command="bash benchmarks/gpu_suite.sh", carry=[".whl"], timeout_s=540)
# Wheels under .whl/ (or $WHEELS) are installed into /tmp/site first (a transformers the image lacks); the package
# itself is imported from this tree (PYTHONPATH), so nothing is built there.
#
# SMOKE=1 runs the same parts at the scripts' --regression sizes on CPU (seconds): the tests use it to keep this
# script working where no GPU is.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-outputs/benchmarks/gpu}
python=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
mkdir -p "$out"
if compgen -G "$wheels/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl || { echo "error: could not install the wheels under $wheels/" >&2; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Fail at once, with the versions, where the package cannot be imported (e.g. a transformers below the floor).
"$python" - <<'PY' 2>&1 | tee "$out/suite.log" || exit 1
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
import modeling_bridge  # raises here, not in every part, when this environment cannot run the package
PY
failed=0
run() {  # name, time limit in seconds, script, its options on a GPU, its options in the smoke run (after --regression)
    local name=$1 limit=$2 script=$3 options=$4
    [ "${SMOKE:-0}" = 1 ] && options="--regression $5"
    echo "== $name" | tee -a "$out/suite.log"
    # shellcheck disable=SC2086  # the options are words
    timeout "$limit" "$python" "$script" $options --output "$out/$name.json" 2>&1 | tee -a "$out/suite.log" |
        grep -v Warning
    local status=${PIPESTATUS[0]}
    [ "$status" = 0 ] && return
    echo "error: $name exited with status $status (124: over its $limit s)" | tee -a "$out/suite.log"
    failed=1
}
run zero_shot 100 benchmarks/zero_shot_speed.py \
    "--size base --num_labels 1000 --num_images 8 --batch_size 256" "--rounds 1 --zero_shot_rounds 1"
run pairwise 75 benchmarks/pairwise_scoring.py \
    "--size base --n_images 64 --n_texts 64 --skip_per_pair --chunk_sizes 256,1024,4096" \
    "--repeats 1 --n_images 4 --n_texts 4"
run pairwise_compiled 110 benchmarks/pairwise_scoring.py \
    "--size base --n_images 64 --n_texts 64 --skip_per_pair --chunk_sizes 1024 --compile" \
    "--skip_per_pair --repeats 1 --n_images 4 --n_texts 4 --chunk_sizes 8 --compile"
run training 130 benchmarks/training_step.py "--size base --batch_size 128" "--rounds 1"
# The targets against the results (whatever parts finished) and the measured matrix-product ceiling, printed last.
timeout 45 "$python" benchmarks/summarize.py "$out" 2>&1 | tee -a "$out/suite.log" || failed=1
exit $failed
