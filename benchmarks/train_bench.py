"""Training step time per image with SSL, BCE and softmax CE, measured side by side.

Each step is the real `training.Trainer.train_step` (forward, loss sums, cross-replica loss,
weight decay, backward, SGD momentum update, host fetch of the metrics) of DeepLabv3 at crop
`--crop` on one device. The losses share one model; each has its own optimizer and compiled
step. After one warm-up step per loss, the repetitions are interleaved (SSL, SSL without its
CPU kernel, BCE, CE, SSL, ...) so load changes of a shared machine hit every loss alike; the
table gives medians and the median of the per-repetition ratios to BCE. Target: SSL at most
1.03x BCE.

    python benchmarks/train_bench.py --variants mobilenet_v2 resnet_v1_101_beta --crop 513 \
        --batch 2 --repetitions 5 --markdown train_bench.md  (a table for docs/benchmarks.md)
"""
import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deeplab_ssl import losses, training  # noqa: E402
from deeplab_ssl.model import build_deeplab  # noqa: E402

NUM_CLASSES = 21
# name -> get_loss's arguments; ssl_xla is the SSL without its CPU kernel.
LOSSES = {"ssl": ("ssl", {}), "ssl_xla": ("ssl", {"implementation": "xla"}),
          "bce": ("bce", {}), "softmax_ce": ("softmax_ce", {})}


def model_options(variant):
    """DeepLabv3 as in the paper (ResNet: ASPP 6, 12, 18) or deeplab's mobilenet_v2 head."""
    if variant == "mobilenet_v2":
        return dict(output_stride=16)
    return dict(output_stride=16, atrous_rates=[6, 12, 18], multi_grid=[1, 2, 4],
                aspp_with_separable_conv=False)


def dataset_fn_of(crop, batch):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, crop, crop, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, (batch, crop, crop, 1)).astype(np.int32)
    labels[:, :, : crop // 8] = 255  # Some ignored pixels, as VOC's object borders.

    def dataset_fn(input_context):
        return tf.data.Dataset.from_tensors((images, labels)).repeat()
    return dataset_fn


def bench_variant(variant, crop, batch, repetitions, steps, logdir):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = build_deeplab(variant, NUM_CLASSES, weight_decay=1e-4, **model_options(variant))
    trainers, iterators = {}, {}
    for name in LOSSES:
        options = training.TrainOptions(
            train_logdir=os.path.join(logdir, variant, name), train_batch_size=batch,
            base_learning_rate=1e-4, training_number_of_steps=1000)
        loss_name, loss_kwargs = LOSSES[name]
        trainers[name] = training.Trainer(lambda: model, losses.get_loss(loss_name, **loss_kwargs),
                                          options, strategy=strategy)
        iterators[name] = trainers[name].make_iterator(dataset_fn_of(crop, batch))
        trainers[name].train_step(trainers[name].next_batch(iterators[name]))  # Warm-up.
    seconds = {name: [] for name in LOSSES}
    for _ in range(repetitions):
        for name in LOSSES:
            start = time.perf_counter()
            for _ in range(steps):
                trainers[name].train_step(trainers[name].next_batch(iterators[name]))
            seconds[name].append((time.perf_counter() - start) / (steps * batch))
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["mobilenet_v2", "resnet_v1_101_beta"])
    parser.add_argument("--crop", type=int, default=513)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1, help="steps per timed repetition")
    parser.add_argument("--markdown", help="write the table to this file too")
    args = parser.parse_args()

    header = (f"Training step time per image, DeepLabv3, crop {args.crop}, batch {args.batch}, "
              f"{NUM_CLASSES} classes, float32, one device ({platform.processor() or 'CPU'}, "
              f"{os.cpu_count()} cores, TF {tf.__version__}, Keras {keras.__version__}); "
              f"medians of {args.repetitions} interleaved repetitions of {args.steps} step(s).")
    rows = ["| model | loss | s / image | ratio to BCE (median of pairs) | load average |",
            "| --- | --- | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as logdir:
        for variant in args.variants:
            seconds = bench_variant(variant, args.crop, args.batch, args.repetitions,
                                    args.steps, logdir)
            load = os.getloadavg()[0]
            for name in LOSSES:
                ratio = statistics.median(a / b for a, b in zip(seconds[name], seconds["bce"]))
                rows.append(f"| {variant} | {name} | {statistics.median(seconds[name]):.3f} | "
                            f"{ratio:.3f} | {load:.1f} |")
                print(rows[-1], flush=True)
    text = "\n".join([header, "", *rows]) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown + ".tmp", "w") as f:
            f.write("# Benchmarks: training step\n\n" + text)
        os.replace(args.markdown + ".tmp", args.markdown)


if __name__ == "__main__":
    main()
