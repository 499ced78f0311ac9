#!/usr/bin/env bash
# `make demo`: the whole workflow on the generated demo set, on this CPU, in a few minutes:
# build the records, train DeepLabv3 (mobilenet_v2) with the SSL, evaluate, visualize, export
# (SavedModel, and TFLite float16 for phones), and run each export on one image.
# Usage: scripts/demo.sh PYTHON OUT_DIR
# The flagfiles point at demo_out/; OUT_DIR other than demo_out overrides their folders.
set -euo pipefail
PY=${1:-python}
OUT=${2:-demo_out}
mkdir -p "$OUT"

echo "== 1/6 build the demo records"
"$PY" -m deeplab_ssl.datasets.build_demo_data --output_dir="$OUT/data"

echo "== 2/6 train (resumes if $OUT/train has a checkpoint; a finished run does not train again)"
"$PY" train.py --flagfile=configs/demo_train.flags \
  --dataset_dir="$OUT/data" --train_logdir="$OUT/train"

echo "== 3/6 evaluate on val"
"$PY" eval.py --flagfile=configs/demo.flags --dataset_dir="$OUT/data" \
  --checkpoint_dir="$OUT/train" --eval_logdir="$OUT/eval" --max_number_of_evaluations=1

echo "== 4/6 visualize a few val images"
"$PY" vis.py --flagfile=configs/demo.flags --dataset_dir="$OUT/data" \
  --checkpoint_dir="$OUT/train" --vis_logdir="$OUT/vis" --num_vis_examples=8

echo "== 5/6 export a SavedModel and run it on one image"
"$PY" export.py --flagfile=configs/demo.flags --checkpoint_dir="$OUT/train" \
  --export_path="$OUT/export"
IMAGE="$(ls "$OUT"/vis/segmentation_results/*_image.png | head -1)"
"$PY" predict.py --saved_model_dir="$OUT/export" --output_dir="$OUT/predict" "$IMAGE"

echo "== 6/6 export a TFLite float16 model at the demo images' size and run it on the same image"
"$PY" export.py --flagfile=configs/demo.flags --checkpoint_dir="$OUT/train" \
  --export_format=tflite --crop_size=128,160 --quantize=float16 \
  --export_path="$OUT/tflite/model_float16.tflite"
"$PY" predict.py --tflite_path="$OUT/tflite/model_float16.tflite" \
  --output_dir="$OUT/predict_tflite" "$IMAGE"
echo "demo done: results in $OUT/ (eval/ has the mIoU table, vis/ the pictures, export/ and"
echo "tflite/ the models, predict/ and predict_tflite/ their predictions)"
