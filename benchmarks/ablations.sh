#!/usr/bin/env bash
# The seed's claims on real photos: one grid sweep per claim and data set (docs/ablations.md).
#
#   bash benchmarks/ablations.sh [SWEEPS_DIR]      # from the project's root; default sweeps/
#   SETS=cifar100-dev bash benchmarks/ablations.sh  # one data set only
#
# Every sweep is an ordinary `python sweep.py` command (printed before it starts); run again,
# the same command trains only the cells still missing. The scale is chosen to fit a 2-core
# CPU: the claims on a [1, 1, 1, 1] network at width 16, the blocks claim on the seed's
# [5, 5, 5, 5] against [3, 4, 6, 3] at width 16 with fewer epochs; scored on a validation
# split (val_acc), never on the test pictures.
set -euo pipefail
sweeps=${1:-sweeps}
data=../shared/data
common=(--batch-size 64 --num-workers 0 --gradcam-images 0 --tensorboard off)

run() {  # study, space file, seeds, then the training flags
    local study=$1 space=$2 seeds=$3
    shift 3
    local cmd=(python sweep.py --study "$study" --sampler grid --space "spaces/$space.yaml"
               --seeds "$seeds" --pruner none --workers 2 --sweeps-dir "$sweeps" -- "$@")
    echo "+ ${cmd[*]}"
    local t0=$SECONDS
    "${cmd[@]}" > "$sweeps/$study.out" 2>&1 || echo "  (exit $?: see $sweeps/$study.out)"
    echo "  $study: $((SECONDS - t0)) s"
}

mkdir -p "$sweeps"
for set in ${SETS:-cifar10-dev cifar100-dev}; do
    case $set in
        cifar10-dev) val=400 epochs=10 deep_epochs=3 ;;    # 4 classes, 500 training photos each
        cifar100-dev) val=1000 epochs=5 deep_epochs=2 ;;   # 20 classes, 250 each
    esac
    small=(--dataset folder --data-dir "$data/$set" --val-split "$val" --blocks 1 1 1 1 --width 16
           --epochs "$epochs" "${common[@]}")
    short=${set%-dev}
    run "$short-seeds" seeds 5 "${small[@]}"
    for claim in maxpool dropout cutmix label_smoothing; do
        run "$short-$claim" "$claim" 3 "${small[@]}"
    done
    run "$short-blocks" blocks 3 --dataset folder --data-dir "$data/$set" --val-split "$val" \
        --width 16 --epochs "$deep_epochs" "${common[@]}"
done
