#!/usr/bin/env bash
# `make demo`: the whole workflow on the generated demo set, on this CPU, in a few minutes:
# build the records, train DeepLabv3 (mobilenet_v2) with the SSL, evaluate, visualize, export,
# and run the exported model on one image. Usage: scripts/demo.sh PYTHON OUT_DIR
# The flagfiles point at demo_out/; OUT_DIR other than demo_out overrides their folders.
set -euo pipefail
PY=${1:-python}
OUT=${2:-demo_out}
mkdir -p "$OUT"

echo "== 1/5 build the demo records"
"$PY" -m deeplab_ssl.datasets.build_demo_data --output_dir="$OUT/data"

echo "== 2/5 train (resumes if $OUT/train has a checkpoint; a finished run does not train again)"
"$PY" train.py --flagfile=configs/demo_train.flags \
  --dataset_dir="$OUT/data" --train_logdir="$OUT/train"

echo "== 3/5 evaluate on val"
"$PY" eval.py --flagfile=configs/demo.flags --dataset_dir="$OUT/data" \
  --checkpoint_dir="$OUT/train" --eval_logdir="$OUT/eval" --max_number_of_evaluations=1

echo "== 4/5 visualize a few val images"
"$PY" vis.py --flagfile=configs/demo.flags --dataset_dir="$OUT/data" \
  --checkpoint_dir="$OUT/train" --vis_logdir="$OUT/vis" --num_vis_examples=8

echo "== 5/5 export a SavedModel and run it on one image"
"$PY" export.py --flagfile=configs/demo.flags --checkpoint_dir="$OUT/train" \
  --export_path="$OUT/export"
"$PY" -m deeplab_ssl.predict --model_dir="$OUT/export" --output_dir="$OUT/predict" \
  "$(ls "$OUT"/vis/segmentation_results/*_image.png | head -1)"
echo "demo done: results in $OUT/ (eval/ has the mIoU table, vis/ the pictures, export/ the model)"
