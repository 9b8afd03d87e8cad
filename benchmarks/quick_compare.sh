#!/usr/bin/env bash
# The quick protocol on the real CIFAR-100 (docs/method.md#quick-protocol): resnet56 -> resnet20 with
# vanilla, kd, reviewkd, dkd and fam_kd on the configs/cifar100-quick schedule, then the comparison table.
#
#   FAMKD_DATA=/path/to/cifar100 benchmarks/quick_compare.sh [OUT_DIR]
#
# Environment:
#   FAMKD_DATA    CIFAR-100 (cifar-100-python or the .npy layout); required
#   TEACHER       a trained resnet56 checkpoint (community {"model": ...} file or a famkd run's
#                 student_best.pt); unset: the script trains one first with the quick vanilla config
#   QUICK_SCALE   gpu (default): the quick configs as they are, on one GPU (device=auto);
#                 cpu: a slice small enough for a 2-core CPU (CPU_PER_CLASS train images of each class,
#                 CPU_EPOCHS epochs, milestones scaled), on the CPU
#   SEED          run.seed of every run (default 0)
# Each run goes to OUT_DIR/<method>/ (default OUT_DIR: runs/quick_compare); a run already complete there
# is kept, an interrupted one is resumed.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-runs/quick_compare}"
scale="${QUICK_SCALE:-gpu}"
seed="${SEED:-0}"
: "${FAMKD_DATA:?set FAMKD_DATA to a CIFAR-100 folder (cifar-100-python or the .npy layout)}"
export FAMKD_DATA

case "$scale" in
    gpu) overrides=(device=auto) ;;
    cpu)
        per_class="${CPU_PER_CLASS:-50}"
        epochs="${CPU_EPOCHS:-3}"
        overrides=(device=cpu "data.train_per_class=$per_class" "train.epochs=$epochs" "train.lr_milestones=[$((epochs - 1))]")
        ;;
    *) echo "QUICK_SCALE must be gpu or cpu, got '$scale'" >&2; exit 2 ;;
esac
overrides+=("run.seed=$seed")

train() {  # train CONFIG RUN_DIR [key=value ...]: start, resume or keep the run in RUN_DIR
    local config="$1" run_dir="$2"
    shift 2
    if [ -f "$run_dir/summary.json" ] && grep -q '"status": "completed"' "$run_dir/summary.json"; then
        echo "== $run_dir: complete, kept"
    elif [ -f "$run_dir/checkpoints/last.pt" ]; then
        echo "== $run_dir: resuming"
        python -m famkd train --resume "$run_dir"
    else
        echo "== $run_dir: $config"
        python -m famkd train "$config" "${overrides[@]}" "$@" "run.dir=$run_dir"
    fi
}

teacher="${TEACHER:-}"
if [ -z "$teacher" ]; then
    train configs/cifar100-quick/vanilla/resnet56.yaml "$out/teacher"
    teacher="$out/teacher/student_best.pt"
fi

start=$(date +%s)
train configs/cifar100-quick/vanilla/resnet20.yaml "$out/vanilla"
for method in kd reviewkd dkd fam_kd; do
    train "configs/cifar100-quick/$method/resnet56_resnet20.yaml" "$out/$method" "teacher.checkpoint=$teacher"
done
echo "== students trained in $(($(date +%s) - start)) s (QUICK_SCALE=$scale)"
python -m famkd results "$out" --reference
