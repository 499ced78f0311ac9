#!/usr/bin/env bash
# Reruns the CamVid study of docs/results.md from scratch with one command:
#   bash benchmarks/reproduce_camvid.sh [PYTHON]
# Builds the half-size records, then for every method and seed trains (configs/camvid/METHOD.flags,
# --seed=SEED), evaluates on val and keeps the flags, the training log and the evaluation JSON
# under results/camvid/METHOD/seedSEED/. Checkpoints stay in runs/ (not committed). Runs that
# finished are not trained or evaluated again, so a killed study resumes where it stopped.
# METHODS and SEEDS (environment) choose a subset, e.g. METHODS="ce ssl3" SEEDS="0".
# MODEL=deeplabv3plus trains DeepLabv3+ (configs/camvid/deeplabv3plus.flags) instead, into
# results/camvid_deeplabv3plus/ and runs/camvid_deeplabv3plus/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
METHODS=${METHODS:-"ce bce ssim7_3 ssl1 ssl3 ssl7 ssl3_ohem_only ssl3_reweight_only"}
SEEDS=${SEEDS:-"0 1 2"}
CAMVID=${CAMVID:-../shared/data/camvid}
DATA=data/camvid_180x240  # --dataset_dir of configs/camvid/deeplabv3.flags
MODEL=${MODEL:-deeplabv3}
STUDY=camvid
[ "$MODEL" = deeplabv3 ] || STUDY=camvid_$MODEL

# Complete splits, not just shards that exist: a killed build is built again.
if ! "$PY" -c "import sys; from deeplab_ssl.datasets import descriptors, input_pipeline as p
camvid = descriptors.get_descriptor('camvid')
[p.complete_shards(sys.argv[1], s, camvid.split_size(s)) for s in ('train', 'val')]" "$DATA" \
    2>/dev/null; then
  "$PY" -m deeplab_ssl.datasets.build_camvid_data --camvid_root="$CAMVID" \
    --output_dir="$DATA" --resize=180,240 --splits=train,val
fi

for seed in $SEEDS; do
  for method in $METHODS; do
    logdir=runs/$STUDY/${method}_seed$seed
    out=results/$STUDY/$method/seed$seed
    if [ -f "$out/eval_val.json" ]; then continue; fi
    echo "== $MODEL $method seed $seed"
    mkdir -p "$out"
    "$PY" train.py --flagfile="configs/camvid/$method.flags" \
      --flagfile="configs/camvid/$MODEL.flags" --seed="$seed" --train_logdir="$logdir" 2>&1 \
      | tee "$out/train.log" | grep -E "step [0-9]+/|Error" || true
    [ -f "$logdir/checkpoint" ] || { echo "training $method seed $seed failed" >&2; exit 1; }
    "$PY" eval.py --flagfile="configs/camvid/$MODEL.flags" --checkpoint_dir="$logdir" \
      --eval_split=val --max_number_of_evaluations=1 > "$out/eval.log" 2>&1
    cp "configs/camvid/$method.flags" "$out/"
    cp "$logdir/train_log.jsonl" "$out/"
    json=$(ls -t "$logdir"/model.ckpt-*.eval_val_ms1.json | head -1)
    cp "$json" "$out/eval_val.json.tmp" && mv "$out/eval_val.json.tmp" "$out/eval_val.json"
  done
done
