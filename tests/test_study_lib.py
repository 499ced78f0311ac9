"""benchmarks/study_lib.sh's `run` with a stand-in Python that records its calls: what a run keeps
and which flags reach eval.py (EVAL_FLAGS), without training anything."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Stands in for the project's Python: records each train.py, eval.py and vis.py call; train.py
# writes what train.py writes to its --train_logdir, eval.py a result JSON named by its scales, as
# evaluation.py names it, with the mIoU that SCORES ("RATE=MIOU ...") gives the run's learning
# rate (0.5 where it gives none), vis.py a raw prediction naming its scales. Other calls are
# study_lib.sh reading a JSON: real Python.
FAKE_PYTHON = r"""#!/usr/bin/env bash
value() { for word in "${@:2}"; do [[ $word == --$1=* ]] && echo "${word#*=}"; done; }
case $1 in
  train.py)
    echo "$*" >> "$CALLS"
    logdir=$(value train_logdir "$@")
    mkdir -p "$logdir"
    echo "--seed=$(value seed "$@")" > "$logdir/train.flags"
    value base_learning_rate "$@" > "$logdir/rate"
    echo '{"step": 5}' > "$logdir/train_log.jsonl" ;;
  eval.py)
    echo "$*" >> "$CALLS"
    scales=$(value eval_scales "$@") dir=$(value checkpoint_dir "$@") miou=0.5
    for score in ${SCORES:-}; do
      if [ "${score%=*}" = "$(cat "$dir/rate")" ]; then miou=${score#*=}; fi
    done
    echo "{\"miou\": $miou, \"eval_scales\": \"${scales:-1}\"}" \
      > "$dir/model.ckpt-5.eval_val_ms${scales:-1}.json" ;;
  vis.py)
    echo "$*" >> "$CALLS"
    raw=$(value vis_logdir "$@")/raw_segmentation_results
    mkdir -p "$raw"
    echo "labels at $(value eval_scales "$@")" > "$raw/21_training.png" ;;
  *) exec python3 "$@" ;;
esac
"""


@pytest.fixture
def study(tmp_path):
    """Runs bash lines in tmp_path with study_lib.sh sourced and the fake Python as PY."""
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.flags").write_text("--base_learning_rate=0.01\n")
    (tmp_path / "configs" / "ce.flags").write_text("--loss=softmax_ce\n")

    def run_lines(lines, scores=""):
        script = (f"set -euo pipefail; PY={python} CONFIGS=configs MODEL=configs/model.flags "
                  f"OUT=results RUNS=runs METRIC=miou; "
                  f"source {ROOT}/benchmarks/study_lib.sh; {lines}")
        subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True,
                       env=dict(os.environ, CALLS=str(tmp_path / "calls"), SCORES=scores))
        return (tmp_path / "calls").read_text().splitlines()
    return run_lines


def test_a_run_keeps_its_record_and_eval_flags_reach_eval_py(study, tmp_path):
    calls = study("EVAL_FLAGS=--eval_scales=2 run calibration large 0 configs/ce.flags --x=1; "
                  "run calibration plain 1 configs/ce.flags")
    evals = [call for call in calls if call.startswith("eval.py")]
    assert evals[0].startswith("eval.py --flagfile=configs/model.flags --eval_scales=2 ")
    assert "--eval_scales" not in evals[1]  # EVAL_FLAGS held for one run only.
    large = tmp_path / "results" / "calibration" / "large" / "seed0"
    assert json.loads((large / "eval_val.json").read_text())["eval_scales"] == "2"
    assert (large / "flags").read_text() == "--loss=softmax_ce\n--x=1\n--seed=0\n"
    assert (large / "train.flags").read_text() == "--seed=0\n"
    for name in ("train_seconds", "cpu", "train_log.jsonl", "train.log"):
        assert (large / name).is_file()
    assert not (large / "train_started").exists()
    plain = tmp_path / "results" / "calibration" / "plain" / "seed1"
    assert json.loads((plain / "eval_val.json").read_text())["eval_scales"] == "1"


def test_a_run_keeps_its_val_predictions_where_asked(study, tmp_path):
    calls = study("SAVE_VAL_PREDICTIONS=1 EVAL_FLAGS=--eval_scales=3 run grid ce 0 "
                  "configs/ce.flags; run grid ce 1 configs/ce.flags")
    vis = [call for call in calls if call.startswith("vis.py")]
    assert len(vis) == 1 and "--checkpoint_dir=runs/grid/ce_seed0 " in vis[0]
    assert "--eval_scales=3 " in vis[0] and "--vis_split=val " in vis[0]
    run = tmp_path / "results" / "grid" / "ce"
    assert sorted(os.listdir(run / "seed0" / "val_predictions")) == ["21_training.png"]
    assert (run / "seed0" / "val_predictions" / "21_training.png").read_text() == "labels at 3\n"
    assert not (run / "seed0" / "vis.tmp").exists()
    assert not (run / "seed1" / "val_predictions").exists()


def test_a_finished_run_is_skipped(study):
    calls = study("run study ce 0 configs/ce.flags; run study ce 0 configs/ce.flags")
    assert [call.split()[0] for call in calls] == ["train.py", "eval.py"]


@pytest.mark.parametrize("scores, rates", [
    # Best inside the grid: 0.01, 0.02 and 0.04 only.
    ("0.01=0.5 0.02=0.6 0.04=0.55", ["0.01", "0.02", "0.04"]),
    # Best at the top while it rises: 0.08, then 0.16 (where the grid ends).
    ("0.01=0.3 0.02=0.5 0.04=0.57 0.08=0.58 0.16=0.2", ["0.01", "0.02", "0.04", "0.08", "0.16"]),
    # Best at the bottom: 0.005, then 0.0025 (where the grid ends).
    ("0.01=0.6 0.02=0.5 0.04=0.4 0.005=0.65 0.0025=0.7",
     ["0.01", "0.02", "0.04", "0.005", "0.0025"]),
])
def test_the_grid_goes_past_an_end_while_that_end_is_best(study, scores, rates):
    calls = study("run_grid ce; run_grid ce; next_rate ce >> calls", scores)
    trained = [call.split("--base_learning_rate=")[1].split()[0] for call in calls
               if call.startswith("train.py")]
    assert trained == rates  # The second run_grid has nothing left to run.
    assert calls[-1] == "none"
