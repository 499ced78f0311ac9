#!/usr/bin/env bash
# The DRIVE study of docs/results.md (issue 27), with one command:
#   bash benchmarks/reproduce_drive.sh [PYTHON]
# DeepLabv3+ mobilenet_v2 from deeplab's ImageNet checkpoint on DRIVE's retinal vessels
# (configs/drive/), val = training images 36-40. Builds the records, then runs STAGES in order:
#   calibration  softmax CE, seed 0, lr 0.01, in each setting of CALIBRATION below: the output
#                stride, crop, steps and image scale of configs/drive/ are chosen from these on
#                val (F1 of the vessels), then frozen
#   grid         each loss of GRID_METHODS at its own learning rate, seed 0, by the contest's
#                rule (benchmarks/study_lib.sh), compared by val F1
#   seeds        each loss at its rate: seeds 1-2 (3-4 for FIVE_SEEDS)
# Every run keeps its flags, train.flags, whole train.log, train_log.jsonl, evaluation JSON (F1,
# AUC, sensitivity, specificity, accuracy, mIoU), predicted val labels (val_predictions/),
# training seconds and CPU under results/drive/STAGE/NAME/seedSEED/; checkpoints stay in
# runs/drive/. Finished runs are skipped and a killed training resumes: the command also
# resumes a stopped study. Runs are deterministic for a seed on one CPU type.
# STAGES, GRID_METHODS, FIVE_SEEDS and SEEDS (environment) choose a subset. Bash reads a script
# as it runs it: to edit this file during a study, run a copy (bash -c "$(cat FILE)" FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
STAGES=${STAGES:-"calibration grid seeds"}
GRID_METHODS=${GRID_METHODS:-"ce topk_ce lovasz ssl3 bce ssl_softmax_topk_balanced"}
FIVE_SEEDS=${FIVE_SEEDS:-""}
SEEDS=${SEEDS:-"0 1 2 3 4"}
DRIVE=${DRIVE:-../shared/data/drive}
CONFIGS=configs/drive
MODEL=$CONFIGS/deeplabv3plus.flags
DATA=data/drive  # --dataset_dir of $MODEL
OUT=results/drive
RUNS=runs/drive
METRIC=f1  # The field's: F1 (= Dice) of the vessels inside the field of view, pooled.
# The grid and seeds evaluate at the image scale the calibration chose (os16_crop257_scale3).
EVAL_FLAGS=${EVAL_FLAGS:-"--eval_scales=3"}
# Each run also keeps its predicted val labels (val_predictions/), drive_vessels.png's source.
SAVE_VAL_PREDICTIONS=1

# The settings tried for the schedule (softmax CE, seed 0): NAME, the image scale eval.py runs
# at, and the flags of train.py that differ from train.flags; each 16-20 minutes of training
# on 2 AVX-512 cores (stride 16 at crop 321 runs ~1.45 s a step at batch 8, stride 8 twice that,
# crop 257 two thirds). The decoder's logits are at 1/4 of the input, coarser than a 1-pixel
# vessel: the last settings enlarge the images, trained at scales around the evaluation's.
STRIDE8="--output_stride=8 --train_crop_size=321,321 --training_number_of_steps=300"
CROP321="--output_stride=16 --train_crop_size=321,321 --training_number_of_steps=600"
CROP257="--output_stride=16 --train_crop_size=257,257 --training_number_of_steps=900"
SCALE1="--min_scale_factor=0.75 --max_scale_factor=1.5"
CALIBRATION=(
  "os16_crop321 1 $CROP321 $SCALE1"
  "os8_crop321 1 $STRIDE8 $SCALE1"
  "os16_crop257 1 $CROP257 $SCALE1"
  "os16_crop321_scale2 2 $CROP321 --min_scale_factor=1.5 --max_scale_factor=2.5"
  "os16_crop321_scale3 3 $CROP321 --min_scale_factor=2.5 --max_scale_factor=3.5"
  "os16_crop321_scale4 4 $CROP321 --min_scale_factor=3.5 --max_scale_factor=4.5"
  "os16_crop257_scale3 3 $CROP257 --min_scale_factor=2.5 --max_scale_factor=3.5"
)

source benchmarks/study_lib.sh
build_records drive "$DATA" train,val,trainval build_drive_data --drive_root="$DRIVE"

for stage in $STAGES; do
  case $stage in
    calibration)
      for setting in "${CALIBRATION[@]}"; do
        read -r -a words <<< "$setting"
        EVAL_FLAGS=--eval_scales=${words[1]} \
          run calibration "${words[0]}" 0 "$CONFIGS/ce.flags" "${words[@]:2}"
      done ;;
    grid) grid_stage ;;
    seeds) seeds_stage ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
