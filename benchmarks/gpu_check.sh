#!/usr/bin/env bash
# GPU check for famkd (about 7 minutes on one H100, section 2d estimated; budget 10). Run from anywhere:
#
#     python benchmarks/make_cifar_slice.py      # once, where the real CIFAR-100 is (./.cifar_slice is git-ignored)
#     bash benchmarks/gpu_check.sh
#
# Prints, in order:
#   1. the FAM fast-vs-direct and cross-attention equivalence check on the device (float64);
#   2. `famkd bench` for resnet32x4 -> resnet8x4 and resnet56 -> resnet20, fp32, then bf16 + channels-last;
#      2d. both ImageNet pairs, resnet34 -> resnet18 and resnet50 -> MobileNetV1, at 224 x 224 (IMAGENET_SIZE,
#      1000 classes), kd, reviewkd and fam_kd, at batch 64 and 128 per GPU (IMAGENET_BATCHES), fp32 and
#      bf16 + channels-last, each without and with torch.compile (IMAGENET_COMPILE="0 1"), IMAGENET_STEPS timed
#      steps: step time and peak memory per GPU, printed as one table at the end ("ImageNet step table");
#      2e. the detection distillers (benchmarks/bench_detection.py, both fam_kd forms), R101 -> R18 at 800 x 1333,
#      batch 2;
#   3. a 2-epoch fam_kd run (resnet56 -> resnet20, bf16) on ./.cifar_slice (10k real CIFAR-100 images),
#      with the slice's teacher checkpoint (.cifar_slice/teacher.pth).
# Settings (environment): DEVICE (cuda), STEPS (20), WARMUP (3), TRAIN_STEPS (0 = whole epochs),
# PYTHON (python), IMAGENET_BATCHES ("64 128"), IMAGENET_SIZE (224), IMAGENET_STEPS (10), IMAGENET_COMPILE ("0 1"),
# DETECTION_SIZE ("800x1333": height x width), COMPILE=1 adds a `famkd bench --compile` run of the CIFAR kd,fam_kd.
# The time of section 2d on a GPU is not measured yet (no GPU was lent when it was written): half of its 16
# `famkd bench` calls compile every model; IMAGENET_COMPILE=0 leaves those out if the section runs long.
# A CPU dry run:
#     DEVICE=cpu STEPS=2 WARMUP=1 TRAIN_STEPS=2 BATCH=8 IMAGENET_BATCHES=2 IMAGENET_SIZE=64 IMAGENET_STEPS=1 \
#         IMAGENET_COMPILE=0 DETECTION_SIZE=64x96 bash benchmarks/gpu_check.sh
set -euo pipefail

cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
BATCH=${BATCH:-64}
IMAGENET_BATCHES=${IMAGENET_BATCHES:-64 128}
IMAGENET_SIZE=${IMAGENET_SIZE:-224}
IMAGENET_STEPS=${IMAGENET_STEPS:-10}
IMAGENET_COMPILE=${IMAGENET_COMPILE:-0 1}
DETECTION_SIZE=${DETECTION_SIZE:-800x1333}
TRAIN_STEPS=${TRAIN_STEPS:-0}
PYTHON=${PYTHON:-python}
COMPILE=${COMPILE:-0}
SLICE=.cifar_slice
OUT=${OUT:-gpu_check_results}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
start=$SECONDS

section() { echo; echo "=== $1 ($((SECONDS - start)) s elapsed) ==="; }
famkd() { "$PYTHON" -m famkd "$@"; }

section "environment"
"$PYTHON" - "$DEVICE" <<'EOF'
import sys, torch
device = sys.argv[1]
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, device {device}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("gpu_check: CUDA is not available here; set DEVICE=cpu for a dry run")
    print(torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF

section "1. FAM and cross-attention equivalence on $DEVICE (float64)"
"$PYTHON" benchmarks/fam_equivalence.py --device "$DEVICE" --dtype float64

section "2a. famkd bench, fp32"
for pair in "resnet32x4 resnet8x4" "resnet56 resnet20"; do
    set -- $pair
    famkd bench --teacher "$1" --student "$2" --methods vanilla,kd,reviewkd,fam_kd --batch-size "$BATCH" \
        --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE" --json "$OUT/$1_$2_fp32.json"
done

section "2b. famkd bench, bf16 + channels-last"
for pair in "resnet32x4 resnet8x4" "resnet56 resnet20"; do
    set -- $pair
    famkd bench --teacher "$1" --student "$2" --methods vanilla,kd,reviewkd,fam_kd --batch-size "$BATCH" \
        --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE" --amp bf16 --channels-last \
        --json "$OUT/$1_$2_bf16.json"
done

if [ "$COMPILE" = 1 ]; then
    section "2c. famkd bench --compile, bf16 + channels-last"
    famkd bench --teacher resnet32x4 --student resnet8x4 --methods kd,fam_kd --batch-size "$BATCH" \
        --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE" --amp bf16 --channels-last --compile \
        --json "$OUT/resnet32x4_resnet8x4_bf16_compile.json"
fi

section "2d. famkd bench, ImageNet pairs at $IMAGENET_SIZE, batch $IMAGENET_BATCHES, fp32 / bf16, compile $IMAGENET_COMPILE"
for pair in "resnet34 resnet18" "resnet50 MobileNetV1"; do
    set -- $pair
    for batch in $IMAGENET_BATCHES; do
        for compiled in $IMAGENET_COMPILE; do
            compile_flag=(); [ "$compiled" = 1 ] && compile_flag=(--compile)
            for precision in fp32 bf16; do
                amp_flags=(); [ "$precision" = bf16 ] && amp_flags=(--amp bf16 --channels-last)
                famkd bench --teacher "$1" --student "$2" --image-size "$IMAGENET_SIZE" --num-classes 1000 \
                    --methods kd,reviewkd,fam_kd --batch-size "$batch" --steps "$IMAGENET_STEPS" --warmup "$WARMUP" \
                    --device "$DEVICE" ${amp_flags[@]+"${amp_flags[@]}"} ${compile_flag[@]+"${compile_flag[@]}"} \
                    --json "$OUT/imagenet_$1_$2_b${batch}_${precision}_compile${compiled}.json"
            done
        done
    done
done

section "2e. detection: R101 -> R18 Faster R-CNN at COCO's size (${DETECTION_SIZE}), batch 2 per GPU, fp32"
"$PYTHON" benchmarks/bench_detection.py --teacher resnet101 --student resnet18 --min-size "${DETECTION_SIZE%x*}" \
    --max-size "${DETECTION_SIZE#*x}" --batch-size 2 --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE" \
    --methods vanilla,kd,reviewkd,fam_kd,fam_kd:form=review --json "$OUT/detection_resnet101_resnet18.json"

section "3. 2-epoch fam_kd on $SLICE (resnet56 -> resnet20, bf16)"
if [ ! -f "$SLICE/meta.json" ] || [ ! -f "$SLICE/teacher.pth" ]; then
    echo "gpu_check: $SLICE is missing; run: python benchmarks/make_cifar_slice.py (and carry $SLICE)" >&2
    exit 1
fi
run_dir="$OUT/fam_kd_slice_run"
rm -rf "$run_dir"
famkd train configs/cifar100/fam_kd/resnet56_resnet20.yaml teacher.checkpoint="$SLICE/teacher.pth" \
    data.root="$SLICE" data.download=false train.epochs=2 train.max_steps_per_epoch="$TRAIN_STEPS" \
    train.batch_size="$BATCH" device="$DEVICE" amp=bf16 run.dir="$run_dir"
"$PYTHON" - "$run_dir" <<'EOF'
import json, sys
for line in open(f"{sys.argv[1]}/metrics.jsonl"):
    r = json.loads(line)
    print(f"epoch {r['epoch']}: {r['images_per_s']:.0f} img/s, data wait {100 * r['data_wait_fraction']:.1f}%, "
          f"test top-1 {r['test_acc']:.2f}%")
EOF

section "ratios to kd"
"$PYTHON" - "$OUT" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    for r in json.loads(path.read_text()):
        if r["method"] != "kd" and r["ratio_to_kd"] is not None:
            print(f"{path.stem:<36} {r['method']:<9} {r['ratio_to_kd']:.2f} x kd  "
                  f"({r['ms_per_step']:.1f} ms/step, peak {r['peak_mem_mb']:.0f} MiB)")
EOF
section "ImageNet step table (2d)"
"$PYTHON" - "$OUT" <<'EOF'
import json, pathlib, sys
print(f"{'pair':<24} {'batch':>5} {'precision':<9} {'compile':<7} {'method':<9} {'ms/step':>8} {'img/s':>7} {'peak MiB':>9}")
for path in sorted(pathlib.Path(sys.argv[1]).glob("imagenet_*_compile*.json")):
    for r in json.loads(path.read_text()):
        pair = f"{r['teacher']}->{r['student']}"
        precision = "bf16+cl" if r["amp"] == "bf16" else "fp32"
        peak = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        print(f"{pair:<24} {r['batch_size']:>5} {precision:<9} {str(r['compile']).lower():<7} {r['method']:<9} "
              f"{r['ms_per_step']:>8.1f} {r['images_per_s']:>7.0f} {peak:>9}")
EOF
echo "gpu_check: done in $((SECONDS - start)) s"
