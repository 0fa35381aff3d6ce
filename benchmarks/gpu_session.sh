#!/usr/bin/env bash
# One GPU session for the shipped histology backbone (issue 7), in one device call.
#
#   benchmarks/gpu_session.sh prepare        # here: the images and the wheel the device lacks
#   benchmarks/gpu_session.sh device [MIN]   # there, through the device tool's run, e.g.
#       run(command="bash benchmarks/gpu_session.sh device 8", carry=["data/pretrain", ".whl"], timeout_s=600)
#       run(command="KIND=faces bash benchmarks/gpu_session.sh device 8", carry=["data/pretrain_faces", ".whl"], ...)
#
# On the device it runs tests/test_gpu.py (25 s), with THROUGHPUT=1 measures pretraining
# throughput (small and paper presets, fp32 vs bf16, small with and without torch.compile; about
# 3 minutes, done once on 27 Nov 2026), then pretrains the `small` preset with the MDM recipe for
# what is left of BUDGET_S (540) seconds, at most MIN minutes, continuing from
# benchmarks/pretraining/histology.safetensors (the committed result of the last GPU session) or
# resources/histology.safetensors (a session's files come back as float16 weights only, so
# sessions chain with --init, not --resume). The checkpoint and its JSON are written straight to
# $OUT. Back here: benchmark it against the untrained control (benchmarks/README.md, "Next GPU
# session"), commit it to benchmarks/pretraining/, and to resources/ only if it wins.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    shared=../shared/data/pretrain
    [ -d "$shared" ] || { echo "no $shared: the pretraining images are not on this machine" >&2; exit 1; }
    mkdir -p data/pretrain .whl
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
    # every training image except the benchmark's held-out MoNuSeg test images
    "${PYTHON:-python3}" - "$shared" data/pretrain <<'EOF'
import shutil, sys
from pathlib import Path
from benchmarks.data import pretraining_images
keep = {f"{p.parents[1].name}_{p.stem}" for p in pretraining_images()}  # named glas_train_1.jpg, ...
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
copied = [shutil.copy2(p, dst / p.name) for p in sorted(src.iterdir()) if p.stem in keep]
print(f"{len(copied)} of {len(keep)} pretraining images copied to {dst}")
EOF
    # faces (issue 16): every FASSEG image except the benchmark's frontal/test faces, masks left out
    faces=../shared/data/faces
    if [ -d "$faces" ]; then
        mkdir -p data/pretrain_faces
        for part in frontal/train multipose/train multipose/test; do
            find "$faces/$part" -name '*.jpg' -exec cp {} data/pretrain_faces/ \;
        done
        echo "$(ls data/pretrain_faces | wc -l) face images copied to data/pretrain_faces"
    fi
    "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform any -d .whl "pytorch-msssim==1.0.0"
    du -sh data/pretrain* .whl
    ;;
device)
    # DEVICE, BATCH, CROP, LR, BUDGET_S, PYTHON, THROUGHPUT=1 override the GPU settings (CPU smoke run: DEVICE=cpu BATCH=2 CROP=64)
    minutes=${2:-5} device=${DEVICE:-cuda} batch=${BATCH:-128} crop=${CROP:-256} py=${PYTHON:-python3}
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    out=${OUT:-/tmp/out}
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    timeout 90 "$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.txt" || true
    if [ "${THROUGHPUT:-0}" = 1 ]; then  # measured on 27 Nov 2026 (results/throughput_cuda_*): off by default
    timeout 120 "$py" -m benchmarks.throughput --presets small --batch-size "$batch" --crop "$crop" --warmup 3 \
        --steps 10 --device "$device" --name "throughput_${device}_small" --out "$out" || echo "throughput (small) did not finish"
    timeout 60 "$py" -m benchmarks.throughput --presets paper --batch-size $((batch / 4)) --crop "$crop" --warmup 2 \
        --steps 5 --no-compile --device "$device" --name "throughput_${device}_paper" --out "$out" \
        || echo "throughput (paper) did not finish"
    fi
    # the pretraining gets what is left of BUDGET_S seconds (default 540: the call's 600 less saving
    # and transfer), at most MIN minutes; it writes straight to $OUT, so the last periodic
    # checkpoint comes back even if the call is cut off (the 128 MB resume state stays behind)
    minutes=$("$py" -c "import sys; print(max(0.5, min(float(sys.argv[1]), (float(sys.argv[2]) - float(sys.argv[3])) / 60)))" \
        "$minutes" "${BUDGET_S:-540}" "$SECONDS")
    echo "pretraining for $minutes minutes"
    # continue the committed GPU run (benchmarks/pretraining: every session's result, winning or
    # not), else the shipped backbone, else start fresh
    # KIND=faces: the faces backbone (issue 16), fine-tuned from histology at first, on the face
    # images at half size (the face benchmark's scale), 192-px crops (the faces are 235 px high there)
    kind=${KIND:-histology} images=data/pretrain scale=1
    [ "$kind" = faces ] && { images=data/pretrain_faces scale=0.5 crop=${CROP:-192}; }
    init=()
    for ckpt in "benchmarks/pretraining/$kind.safetensors" "resources/$kind.safetensors" resources/histology.safetensors; do
        [ -f "$ckpt" ] && { init=(--init "$ckpt"); break; }
    done
    "$py" -m napari_mdm.cli pretrain --images "$images" --out "$out/$kind.safetensors" --overwrite --scale "$scale" \
        --preset small --mode mdm --loss ssim --batch-size "$batch" --crop "$crop" --lr "${LR:-2e-4}" --steps 1000000 \
        --checkpoint-every 250 --device "$device" --max-minutes "$minutes" "${init[@]}"
    rm -f "$out"/*.state.safetensors  # 115 MB: over the size that comes back
    ls -la "$out"
    ;;
*)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
