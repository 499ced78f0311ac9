# The functions of the reproduce_*.sh studies, sourced by them. Each run trains with train.py,
# evaluates on val with eval.py and keeps its record; the grid gives each method its own
# learning rate. The sourcing script sets:
#   PY       the Python of the project's environment
#   CONFIGS  the folder of the flagfiles: METHOD.flags per method, train.flags (the schedule)
#   MODEL    the model and dataset flagfile eval.py takes
#   OUT      the results folder (committed): OUT/STAGE/NAME/seedSEED/
#   RUNS     the checkpoints' folder (not committed): RUNS/STAGE/NAME_seedSEED/
#   METRIC   the key of the evaluation JSON the grid compares (miou, f1, ...)
# and may set EVAL_FLAGS: flags eval.py takes after $MODEL (e.g. --eval_scales=2), for one run
# (EVAL_FLAGS=... run ...) or for all.
EVAL_FLAGS=${EVAL_FLAGS:-}

# build_records DATASET DIR SPLITS BUILDER [FLAG...]: runs the record builder (a module of
# deeplab_ssl.datasets) unless the comma-separated SPLITS of DATASET are complete in DIR, not just
# shards that exist: a killed build is built again.
build_records() {
  local dataset=$1 dir=$2 splits=$3 builder=$4
  shift 4
  if ! "$PY" -c "import sys; from deeplab_ssl.datasets import descriptors, input_pipeline as p
d = descriptors.get_descriptor(sys.argv[1])
[p.complete_shards(sys.argv[2], s, d.split_size(s)) for s in sys.argv[3].split(',')]" \
      "$dataset" "$dir" "$splits" 2>/dev/null; then
    "$PY" -m "deeplab_ssl.datasets.$builder" --output_dir="$dir" --splits="$splits" "$@"
  fi
}

# wanted LIST WORD: whether the space-separated LIST (e.g. $SEEDS) holds WORD.
wanted() { [[ " $1 " == *" $2 "* ]]; }

# record_cpu OUT: the CPU a run ran on, in OUT/cpu. A seed reproduces only on the same CPU type
# (the kernels differ with AVX-512 and AVX2), and not always across generations of one vendor
# (DRIVE's CE, seed 0: val F1 0.750 and 0.763 on two AVX-512 AMD EPYCs): the last line gives
# the CPU's family and model.
record_cpu() {
  { grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs
    grep -q avx512f /proc/cpuinfo && echo avx512 || echo avx2; nproc
    awk -F': ' '/^cpu family/ {f = $2} /^model\t/ {m = $2} END {print "family", f, "model", m}' \
      /proc/cpuinfo; } > "$1/cpu"
}

# run STAGE NAME SEED FLAGFILE [FLAG...]: trains, evaluates on val, keeps the results; a run
# whose loss diverged keeps its `diverged` file instead of an evaluation.
run() {
  local stage=$1 name=$2 seed=$3 flagfile=$4
  shift 4
  local logdir=$RUNS/$stage/${name}_seed$seed
  local out=$OUT/$stage/$name/seed$seed
  if [ -f "$out/eval_val.json" ] || [ -f "$out/diverged" ]; then return; fi
  echo "== $stage $name seed $seed"
  mkdir -p "$out"
  # A resumed training appends to train.log, and its seconds add to those of the killed one,
  # which ended at train.log's last write (to within a --log_steps interval).
  local seconds=0
  if [ -f "$out/train_started" ]; then
    seconds=$(( $(cat "$out/train_seconds_before" 2>/dev/null || echo 0)
                + $(stat -c %Y "$out/train.log") - $(cat "$out/train_started") ))
    echo "$seconds" > "$out/train_seconds_before"
  fi
  date +%s > "$out/train_started"
  local start=$SECONDS
  # A training that stops (a diverged loss, bad data) leaves checkpoints of earlier steps: its
  # exit status, not a checkpoint, says whether it finished.
  if ! "$PY" train.py --flagfile="$flagfile" "$@" --seed="$seed" --train_logdir="$logdir" 2>&1 \
      | tee -a "$out/train.log" | { grep -iE "step [0-9]+/|error" || true; }; then
    if grep -q "non-finite loss" "$out/train.log"; then
      # A result of the grid (a rate too large), not a failure of the study: kept as such.
      { grep -m1 "non-finite loss" "$out/train.log"; cat "$flagfile"; printf '%s\n' "$@"; } \
        > "$out/diverged"
      record_cpu "$out"
      rm -f "$out/train_started" "$out/train_seconds_before"
      return
    fi
    echo "training $stage $name seed $seed failed: $out/train.log" >&2
    exit 1
  fi
  echo $((seconds + SECONDS - start)) > "$out/train_seconds"
  rm -f "$out/train_started" "$out/train_seconds_before"
  # shellcheck disable=SC2086  # EVAL_FLAGS: words, one flag each.
  "$PY" eval.py --flagfile="$MODEL" $EVAL_FLAGS --checkpoint_dir="$logdir" --eval_split=val \
    --max_number_of_evaluations=1 > "$out/eval.log" 2>&1
  if [ -n "${SAVE_VAL_PREDICTIONS:-}" ]; then save_val_predictions "$logdir" "$out"; fi
  { cat "$flagfile"; printf '%s\n' "$@" "--seed=$seed"; } > "$out/flags"
  cp "$logdir/train.flags" "$out/"  # Every flag as train.py resolved it.
  cp "$logdir/train_log.jsonl" "$out/"
  record_cpu "$out"
  local json
  json=$(ls -t "$logdir"/model.ckpt-*.eval_val_ms*.json | head -1)  # The one eval.py just wrote.
  cp "$json" "$out/eval_val.json.tmp" && mv "$out/eval_val.json.tmp" "$out/eval_val.json"
}

# save_val_predictions LOGDIR OUT: the labels that LOGDIR's latest checkpoint predicts for the
# val images at EVAL_FLAGS (vis.py's raw label PNGs, named after the image files) in
# OUT/val_predictions/, so that pictures outlive the checkpoints (runs/ is not kept).
save_val_predictions() {
  local logdir=$1 out=$2
  rm -rf "$out/vis.tmp" "$out/val_predictions"
  # shellcheck disable=SC2086  # EVAL_FLAGS: words, one flag each.
  "$PY" vis.py --flagfile="$MODEL" $EVAL_FLAGS --checkpoint_dir="$logdir" --vis_split=val \
    --vis_logdir="$out/vis.tmp" --also_save_raw_predictions > "$out/vis.log" 2>&1
  mv "$out/vis.tmp/raw_segmentation_results" "$out/val_predictions"
  rm -rf "$out/vis.tmp"
}

# rate_dir METHOD RATE: the results folder of METHOD's runs at learning rate RATE: the study's
# at the frozen rate of train.flags, the sensitivity stage's where it ran that rate (CE and
# SSL (3), seed 0), else the grid's.
BASE_RATE=$(grep -oP '^--base_learning_rate=\K.*' "$CONFIGS/train.flags")
RATES="0.0025 0.005 0.01 0.02 0.04 0.08 0.16"
rate_dir() {
  if [ "$2" = "$BASE_RATE" ]; then echo "$OUT/study/$1"
  elif [ -d "$OUT/sensitivity/${1}_lr$2" ]; then echo "$OUT/sensitivity/${1}_lr$2"
  else echo "$OUT/grid/${1}_lr$2"; fi
}

# rate_run METHOD RATE SEED: trains and evaluates METHOD at RATE (where not done yet).
rate_run() {
  local dir
  dir=$(rate_dir "$1" "$2")
  run "$(basename "$(dirname "$dir")")" "$(basename "$dir")" "$3" "$CONFIGS/$1.flags" \
    --base_learning_rate="$2"
}

# rate_score METHOD RATE: the METRIC of seed 0 on val at RATE, 0 where it diverged, -1 where
# that run is missing.
rate_score() {
  local seed0
  seed0=$(rate_dir "$1" "$2")/seed0
  if [ -f "$seed0/eval_val.json" ]; then
    "$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" \
      "$seed0/eval_val.json" "$METRIC"
  elif [ -f "$seed0/diverged" ]; then echo 0
  else echo -1; fi
}

# best_rate METHOD: the rate with the best METRIC of seed 0 on val, or none.
best_rate() {
  local rate best=none best_score=-1 score
  for rate in $RATES; do
    score=$(rate_score "$1" "$rate")
    if awk "BEGIN {exit !($score > $best_score)}"; then best=$rate best_score=$score; fi
  done
  echo "$best"
}

# next_rate METHOD: the rate of RATES that METHOD's grid runs next, or none: past the lowest
# or the highest rate run while that end of the grid is the best (0.005 where 0.01 is best,
# 0.08 where 0.04 is, 0.16 where 0.08 is), so that no method is left at an edge of its grid.
next_rate() {
  local rates=($RATES) best index low=-1 high=-1
  best=$(best_rate "$1")
  for index in "${!rates[@]}"; do
    if [ "$(rate_score "$1" "${rates[index]}")" != -1 ]; then
      if [ $low = -1 ]; then low=$index; fi
      high=$index
    fi
  done
  if [ "$best" = "${rates[high]}" ] && [ $((high + 1)) -lt ${#rates[@]} ]; then
    echo "${rates[high + 1]}"
  elif [ "$best" = "${rates[low]}" ] && [ $low -gt 0 ]; then echo "${rates[low - 1]}"
  else echo none; fi
}

# run_grid METHOD: METHOD's learning rate, from seed 0 on val: 0.01, 0.02 and 0.04, then
# next_rate's until none (runs done are skipped).
run_grid() {
  local rate
  for rate in 0.01 0.02 0.04; do rate_run "$1" "$rate" 0; done
  while rate=$(next_rate "$1"); [ "$rate" != none ]; do rate_run "$1" "$rate" 0; done
}

# grid_stage: the learning rate of each method of GRID_METHODS (run_grid).
grid_stage() {
  local method
  for method in $GRID_METHODS; do run_grid "$method"; done
}

# seeds_stage: each method of GRID_METHODS at its best rate (its grid completed first): seeds
# 1-2, then seeds 3-4 of the methods of FIVE_SEEDS; only the seeds of SEEDS.
seeds_stage() {
  local pass method rate seed
  for pass in "1 2" "3 4"; do
    for method in $GRID_METHODS; do
      run_grid "$method"
      rate=$(best_rate "$method")
      for seed in $pass; do
        if wanted "$SEEDS" "$seed" && { [ "$seed" -le 2 ] || wanted "$FIVE_SEEDS" "$method"; }
        then
          rate_run "$method" "$rate" "$seed"
        fi
      done
    done
  done
}
