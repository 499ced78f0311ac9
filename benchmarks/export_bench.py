"""SavedModel against TFLite float32, float16 and int8: size, CPU latency, agreement and mIoU.

Restores a checkpoint with the model flags (as export.py does), exports it as a SavedModel and as
TFLite float32, float16 and int8 (int8 calibrated on --num_representative images of
--representative_split) at --crop_size, then:

* size on disk of each export (the SavedModel folder counts all its files);
* latency per image on the CPU, with 1 thread and with all the CPUs: each thread count in its
  own worker process (TensorFlow fixes its thread pools at start), which times the four exports
  interleaved, round by round, on one val image: medians over rounds, and each format's ratio
  to TFLite float32 in the same round (the machine is shared: ratios are the figures to read).
  SavedModel: its `serving_default` signature; TFLite: `TFLitePredictor.run` (set input, invoke,
  get outputs) in the LiteRT interpreter;
* on the --eval_split: the share of pixels where each TFLite export gives the SavedModel's label,
  and the mIoU of each (their predictors' labels; evaluation.confusion_matrix /
  segmentation_metrics, eval.py's).

    python benchmarks/export_bench.py --flagfile=configs/camvid/pretrained/deeplabv3plus.flags \
        --dataset_dir=data/camvid --checkpoint_path=RUN/model.ckpt-800 --crop_size=360,480 \
        --output_dir=/tmp/export_bench
"""
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from deeplab_ssl import common, evaluation, serving, tflite  # noqa: E402
from deeplab_ssl.core import feature_extractor  # noqa: E402
from deeplab_ssl.datasets import input_pipeline  # noqa: E402

common.define_checkpoint_flags()
common.define_crop_size_flag("crop_size", None, "Height,width of the exports (required).")
flags.DEFINE_string("output_dir", None, "Folder of the exports (created).")
flags.DEFINE_string("eval_split", "val", "Split of the agreement and the mIoU.")
flags.DEFINE_string("representative_split", "train", "Split that calibrates int8.")
flags.DEFINE_integer("num_representative", 100, "Images that calibrate int8.")
flags.DEFINE_integer("rounds", 7, "Latency: rounds of interleaved runs.")
flags.DEFINE_integer("repetitions", 3, "Latency: runs of each export per round.")
flags.DEFINE_integer("worker_threads", None, "Internal: time the exports with this many threads.")
flags.mark_flags_as_required(["crop_size", "output_dir"])

FLAGS = flags.FLAGS
FORMATS = ("saved_model",) + tuple(f"tflite_{quantize}" for quantize in tflite.QUANTIZATIONS)


def _path(name):
    return os.path.join(FLAGS.output_dir, "saved_model" if name == "saved_model"
                        else f"{name}.tflite")


def _size_mb(path):
    if os.path.isfile(path):
        return os.path.getsize(path) / 1e6
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names) / 1e6


def _predictors(num_threads=None):
    """{format: its `inference.Predictor`}, whose `predict_labels` fits any size."""
    predictors = {"saved_model": serving.SavedModelPredictor(_path("saved_model"))}
    for name in FORMATS[1:]:
        predictors[name] = tflite.TFLitePredictor(_path(name), num_threads)
    return predictors


def _time_exports(image, threads):
    """Worker: {format: [seconds per image of each round]}, the exports interleaved; TensorFlow's
    thread pools must be set to `threads` before it ran anything."""
    signature = tf.saved_model.load(_path("saved_model")).signatures["serving_default"]
    runs = {"saved_model": lambda: signature(images=tf.constant(image))}
    for name in FORMATS[1:]:
        runs[name] = lambda p=tflite.TFLitePredictor(_path(name), threads): p.run(image)
    for run in runs.values():
        run()  # Warm-up: tracing, allocations.
    times = {name: [] for name in runs}
    for round_index in range(FLAGS.rounds):
        names = list(runs)[round_index % len(runs):] + list(runs)[:round_index % len(runs)]
        for name in names:
            start = time.perf_counter()
            for _ in range(FLAGS.repetitions):
                runs[name]()
            times[name].append((time.perf_counter() - start) / FLAGS.repetitions)
    return times


def _latencies(threads):
    """Runs this script as a worker with `threads` threads; its {format: [seconds]}."""
    result = subprocess.run(
        [sys.executable, __file__, *sys.argv[1:], f"--worker_threads={threads}"],
        capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"the {threads}-thread worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _export(model, descriptor, crop_size, pad_value):
    """Writes the four exports; {format: seconds it took}."""
    seconds = {}
    start = time.perf_counter()
    serving.export_model(model, _path("saved_model"), crop_size=crop_size, pad_value=pad_value)
    seconds["saved_model"] = time.perf_counter() - start
    representative = tflite.representative_images(
        input_pipeline.get_dataset(descriptor, FLAGS.dataset_dir, FLAGS.representative_split,
                                   1, mean_pixel=pad_value),
        FLAGS.num_representative, crop_size, pad_value)
    for quantize in tflite.QUANTIZATIONS:
        start = time.perf_counter()
        tflite.export_tflite(model, _path(f"tflite_{quantize}"), crop_size, pad_value,
                             quantize=quantize, representative=representative)
        seconds[f"tflite_{quantize}"] = time.perf_counter() - start
    return seconds


def _agreement_and_miou(descriptor):
    """({format: share of pixels with the SavedModel's label}, {format: metrics dict})."""
    predictors = _predictors()
    dataset = input_pipeline.get_dataset(descriptor, FLAGS.dataset_dir, FLAGS.eval_split, 1)
    num_classes = descriptor.num_classes
    confusion = {name: np.zeros((num_classes, num_classes), np.int64) for name in FORMATS}
    equal = dict.fromkeys(FORMATS, 0)
    num_pixels = 0
    for batch in dataset:
        images = tf.cast(batch["image"], tf.uint8).numpy()
        labels = {name: predictor.predict_labels(images).numpy()
                  for name, predictor in predictors.items()}
        num_pixels += labels["saved_model"].size
        for name in FORMATS:
            equal[name] += int(np.sum(labels[name] == labels["saved_model"]))
            confusion[name] += evaluation.confusion_matrix(
                batch["label"], labels[name], num_classes, descriptor.ignore_label).numpy()
    return ({name: equal[name] / num_pixels for name in FORMATS},
            {name: evaluation.segmentation_metrics(confusion[name], descriptor.class_names,
                                                   descriptor.ignore_label)
             for name in FORMATS})


def main(argv):
    del argv
    if FLAGS.worker_threads:  # TensorFlow fixes its thread pools at its first op.
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.worker_threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.worker_threads)
    crop_size = common.crop_size("crop_size")
    descriptor = common.dataset_descriptor()
    pad_value = feature_extractor.mean_pixel(FLAGS.model_variant)
    if FLAGS.worker_threads:
        image = next(iter(input_pipeline.get_dataset(
            descriptor, FLAGS.dataset_dir, FLAGS.eval_split, 1)))["image"]
        print(json.dumps(_time_exports(tflite.model_input(image, crop_size, pad_value)[0],
                                       FLAGS.worker_threads)))
        return
    model, checkpoint_path = common.restored_model(descriptor.num_classes)
    export_seconds = _export(model, descriptor, crop_size, pad_value)
    all_threads = os.cpu_count()
    latencies = {threads: _latencies(threads) for threads in (1, all_threads)}
    agreement, metrics = _agreement_and_miou(descriptor)

    print(f"{checkpoint_path}: {descriptor.name} {FLAGS.eval_split} at {crop_size}, "
          f"{FLAGS.num_representative} {FLAGS.representative_split} images calibrate int8; "
          f"latency: median of {FLAGS.rounds} rounds x {FLAGS.repetitions} runs, 1 and "
          f"{all_threads} threads")
    print(f"| export | size (MB) | export (s) | ms, 1 thread | x TFLite float32 | "
          f"ms, {all_threads} threads | x TFLite float32 | pixels = SavedModel (%) | mIoU (%) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in FORMATS:
        cells = [name, f"{_size_mb(_path(name)):.2f}", f"{export_seconds[name]:.0f}"]
        for threads in (1, all_threads):
            times = latencies[threads]
            ratios = [t / f for t, f in zip(times[name], times["tflite_none"])]
            cells += [f"{1000 * statistics.median(times[name]):.1f}",
                      f"{statistics.median(ratios):.2f}"]
        cells += [f"{100 * agreement[name]:.2f}", f"{100 * metrics[name]['miou']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    int8_speedup = statistics.median(
        f / q for f, q in zip(latencies[1]["tflite_none"], latencies[1]["tflite_int8"]))
    print("targets: float32 and float16 agree on >= 99.5% of pixels: "
          f"{100 * agreement['tflite_none']:.2f}%, {100 * agreement['tflite_float16']:.2f}%; "
          "int8 loses <= 1.0 mIoU point: "
          f"{100 * (metrics['saved_model']['miou'] - metrics['tflite_int8']['miou']):.2f} "
          f"(SavedModel - int8); int8 >= 2x faster than float32 (1 thread): {int8_speedup:.2f}x; "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    app.run(main)
