#!/usr/bin/env bash
# The GPU benchmarks in one run (paper sizes, bf16 autocast; fused scoring also with compiled interaction layers),
# each result as JSON under ${OUT:-outputs/benchmarks/gpu}. Sized to finish in about 8 minutes on one H100/H200;
# each script has its own time limit so that one slow part cannot take the others' results with it.
#     bash benchmarks/gpu_suite.sh
set -u
out=${OUT:-outputs/benchmarks/gpu}
mkdir -p "$out"
python - <<'PY' > "$out/environment.txt" 2>&1
import torch, transformers
print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
PY
run() {  # name, limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" --output "$out/$name.json" 2>&1 | tee "$out/$name.log" | grep -v Warning
}
run zero_shot 150 python benchmarks/zero_shot_speed.py --size base --num_labels 1000 --num_images 8 --batch_size 256
run pairwise 120 python benchmarks/pairwise_scoring.py --size base --n_images 64 --n_texts 64 --skip_per_pair \
    --chunk_sizes 256,1024,4096
run pairwise_compiled 150 python benchmarks/pairwise_scoring.py --size base --n_images 64 --n_texts 64 \
    --skip_per_pair --chunk_sizes 1024 --compile
run training 180 python benchmarks/training_step.py --size base --batch_size 128
