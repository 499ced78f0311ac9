"""train.py as users run it: killed and restarted, and on two worker processes."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from deeplab_ssl import checkpointing, train_log, train_utils, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_command(demo_dir, logdir, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--dataset=demo",
            f"--dataset_dir={demo_dir}", f"--train_logdir={logdir}",
            "--model_variant=mobilenet_v2", "--depth_multiplier=0.25",
            "--train_crop_size=65,65", "--train_batch_size=2", "--base_learning_rate=0.01",
            "--slow_start_step=3", "--slow_start_learning_rate=0.001", "--log_steps=1",
            *extra]


def environment(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def read_log(logdir):
    with open(os.path.join(logdir, train_log.TRAIN_LOG_NAME)) as f:
        return [json.loads(line) for line in f]


def without_speed(log):
    """The records of a train log without their images_per_second (the only one that varies
    between deterministic runs)."""
    return [{k: v for k, v in record.items() if k != "images_per_second"} for record in log]


def model_weights(logdir):
    """The model's variables in the latest checkpoint of logdir: {name: array}."""
    reader = training.tf.train.load_checkpoint(logdir)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("model/") and "OPTIMIZER" not in name}


def test_a_killed_run_resumes_and_ends_as_the_run_that_was_not_killed(demo_dir, tmp_path):
    flags = ("--training_number_of_steps=16", "--save_interval_steps=4",
             "--nosave_summaries_images", "--deterministic", "--seed=3")
    unkilled = str(tmp_path / "unkilled")
    result = subprocess.run(train_command(demo_dir, unkilled, *flags), env=environment(),
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(unkilled, "model_options.json")) as f:  # For eval, vis and export.
        assert json.load(f)["depth_multiplier"] == 0.25
    with open(os.path.join(unkilled, "train.flags")) as f:  # The run's flags, as resolved.
        resolved = f.read().splitlines()
    assert {"--seed=3", "--deterministic", "--training_number_of_steps=16",
            "--loss=ssl", f"--train_logdir={unkilled}"} <= set(resolved)

    logdir = str(tmp_path / "killed")
    command = train_command(demo_dir, logdir, *flags)
    process = subprocess.Popen(command, env=environment(), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not str(training.tf.train.latest_checkpoint(logdir)).endswith("model.ckpt-8"):
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, "no checkpoint of step 8 in time"
        time.sleep(0.2)
    process.kill()
    process.communicate()
    killed_at = len(read_log(logdir))
    saved = int(training.tf.train.latest_checkpoint(logdir).rsplit("-", 1)[1])
    assert 8 <= saved <= killed_at < 16

    result = subprocess.run(command, env=environment(), cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming at step {saved}." in result.stderr
    log = read_log(logdir)
    assert [record["step"] for record in log] == list(range(1, 17))
    schedule = train_utils.DeepLabLearningRate(0.01, 16, slow_start_step=3,
                                            slow_start_learning_rate=0.001)
    for record in log:  # The same learning rates before and after the restart.
        assert record["learning_rate"] == pytest.approx(float(schedule(record["step"] - 1)))
    assert training.tf.train.latest_checkpoint(logdir).endswith("model.ckpt-16")
    # Deterministic, the two runs are the same: the restart restored the input, the weights,
    # the optimizer's state and dropout's seeds.
    assert without_speed(log) == without_speed(read_log(unkilled))
    weights, unkilled_weights = model_weights(logdir), model_weights(unkilled)
    assert weights.keys() == unkilled_weights.keys()
    for name, value in weights.items():
        assert (value == unkilled_weights[name]).all(), name


def test_exploding_run_stops_with_a_clear_message(demo_dir, tmp_path):
    logdir = str(tmp_path / "train")
    result = subprocess.run(
        train_command(demo_dir, logdir, "--training_number_of_steps=20", "--slow_start_step=0",
                      "--base_learning_rate=1e35", "--save_interval_steps=1",
                      "--nosave_summaries_images"),
        env=environment(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: non-finite loss or gradients at step" in result.stderr
    bad_step = int(result.stderr.split("at step ")[1].split(":")[0])
    latest = training.tf.train.latest_checkpoint(logdir)
    assert latest.endswith(f"model.ckpt-{bad_step - 1}")
    assert f"the last good checkpoint is {latest}" in result.stderr


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_two_workers(demo_dir, logdir, steps):
    """train.py as two MultiWorkerMirroredStrategy workers on 127.0.0.1; their stderr."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    command = train_command(demo_dir, logdir, f"--training_number_of_steps={steps}",
                            "--slow_start_step=1", "--save_interval_steps=2")
    processes = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, env=environment(TF_CONFIG=json.dumps(
                             {"cluster": {"worker": workers},
                              "task": {"type": "worker", "index": index}})))
        for index in range(2)]
    try:
        outputs = [process.communicate(timeout=240)[1] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
        assert "MultiWorkerMirroredStrategy" in output
    return outputs


def test_two_worker_processes_train_together_and_resume(demo_dir, tmp_path):
    logdir = str(tmp_path / "train")
    run_two_workers(demo_dir, logdir, 2)
    assert not os.path.exists(os.path.join(logdir, "worker_1_temp"))
    iterators = [os.path.join(logdir, checkpointing.ITERATORS_DIR, f"worker_{index}")
                 for index in range(2)]
    # Each worker saved its own input iterator beside the chief's checkpoint.
    assert all(training.tf.train.latest_checkpoint(i).endswith("-2") for i in iterators)

    outputs = run_two_workers(demo_dir, logdir, 4)
    for directory, output in zip(iterators, outputs):
        assert "resuming at step 2." in output
        assert (f"Restored the input iterator of this worker from {directory}/"
                f"{checkpointing.ITERATOR_CHECKPOINT_NAME}-2") in output
    assert training.tf.train.latest_checkpoint(logdir).endswith("model.ckpt-4")
    assert [record["step"] for record in read_log(logdir)] == [1, 2, 3, 4]
