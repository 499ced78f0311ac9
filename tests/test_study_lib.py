"""benchmarks/study_lib.sh's `run` with a stand-in Python that records its calls: what a run keeps
and which flags reach eval.py (EVAL_FLAGS), without training anything."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Stands in for the project's Python: records each call; train.py writes what train.py writes
# to its --train_logdir, eval.py a result JSON named by its scales, as evaluation.py names it.
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$CALLS"
value() { for word in "${@:2}"; do [[ $word == --$1=* ]] && echo "${word#*=}"; done; }
case $1 in
  train.py)
    logdir=$(value train_logdir "$@")
    mkdir -p "$logdir"
    echo "--seed=$(value seed "$@")" > "$logdir/train.flags"
    echo '{"step": 5}' > "$logdir/train_log.jsonl" ;;
  eval.py)
    scales=$(value eval_scales "$@")
    echo "{\"miou\": 0.5, \"eval_scales\": \"${scales:-1}\"}" \
      > "$(value checkpoint_dir "$@")/model.ckpt-5.eval_val_ms${scales:-1}.json" ;;
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

    def run_lines(lines):
        script = (f"set -euo pipefail; PY={python} CONFIGS=configs MODEL=configs/model.flags "
                  f"OUT=results RUNS=runs METRIC=miou; "
                  f"source {ROOT}/benchmarks/study_lib.sh; {lines}")
        subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True,
                       env=dict(os.environ, CALLS=str(tmp_path / "calls")))
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


def test_a_finished_run_is_skipped(study):
    calls = study("run study ce 0 configs/ce.flags; run study ce 0 configs/ce.flags")
    assert [call.split()[0] for call in calls] == ["train.py", "eval.py"]
