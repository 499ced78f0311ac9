"""Forward and forward+backward time per image and parameter count of each DeepLab variant.

Each variant is built as in the paper / deeplab's model zoo at output stride 16: DeepLabv3+
(ASPP rates 6, 12, 18, decoder at 4) for the ResNets and Xceptions, deeplab's light
mobilenet_v2 head (1x1 + image pooling ASPP, no decoder). Times are medians over
--repetitions runs of a compiled tf.function (no XLA), after one warm-up run.

    python benchmarks/model_bench.py --size 513 --repetitions 3 --markdown model_bench.md  (a table for docs/benchmarks.md)
"""
import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deeplab_ssl.core import feature_extractor  # noqa: E402
from deeplab_ssl.model import build_deeplab  # noqa: E402

NUM_CLASSES = 21


def model_options(variant):
    if variant == "mobilenet_v2":
        return dict(output_stride=16)
    return dict(output_stride=16, atrous_rates=[6, 12, 18], decoder_output_stride=4)


def median_seconds(function, repetitions):
    function()  # warm-up: tracing and first allocations
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_variant(variant, size, batch, repetitions):
    model = build_deeplab(variant, NUM_CLASSES, **model_options(variant))
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, NUM_CLASSES, (batch, size, size)))

    @tf.function
    def forward():
        return model(images, training=False)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        return tape.gradient(loss, model.trainable_variables)

    result = dict(
        variant=variant, params=model.count_params(),
        trainable=sum(int(np.prod(v.shape)) for v in model.trainable_variables),
        forward=median_seconds(lambda: forward().numpy(), repetitions) / batch,
        forward_backward=median_seconds(
            lambda: [g.numpy() for g in forward_backward()], repetitions) / batch)
    keras.backend.clear_session()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(feature_extractor.MODEL_VARIANTS),
                        help="Comma-separated model variants.")
    parser.add_argument("--size", type=int, default=513, help="Square input size.")
    parser.add_argument("--batch", type=int, default=1, help="Images per run.")
    parser.add_argument("--repetitions", type=int, default=3, help="Timed runs per figure.")
    parser.add_argument("--markdown", help="Also write the table to this markdown file.")
    args = parser.parse_args()

    header = ("| variant | parameters | trainable | forward s/image | forward+backward s/image "
              "| load average |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    print(header, flush=True)
    for variant in args.variants.split(","):
        r = bench_variant(variant, args.size, args.batch, args.repetitions)
        # The 1-minute load average after the runs shows how busy the shared CPU was.
        rows.append("| %s | %s | %s | %.2f | %.2f | %.1f |" % (
            r["variant"], format(r["params"], ","), format(r["trainable"], ","), r["forward"],
            r["forward_backward"], os.getloadavg()[0]))
        print(rows[-1], flush=True)
    if args.markdown:
        text = "\n".join([
            "# Model benchmarks", "",
            "Input %dx%d, batch %d, %d timed runs (median) after one warm-up, output stride 16, "
            "%d classes, float32, tf.function without XLA. ResNets / Xceptions: DeepLabv3+ "
            "(ASPP 6, 12, 18, decoder at 4); mobilenet_v2: deeplab's light head."
            % (args.size, args.size, args.batch, args.repetitions, NUM_CLASSES),
            "Machine: %s, %d CPU cores shared with other jobs while measured (see the load "
            "average: above %d the figures are inflated), TF %s, Keras %s."
            % (platform.processor() or platform.machine(), os.cpu_count(), os.cpu_count(),
               tf.__version__,
               keras.__version__), "",
            "Command: `python benchmarks/model_bench.py --size %d --batch %d --repetitions %d "
            "--variants %s --markdown %s`" % (args.size, args.batch, args.repetitions,
                                              args.variants, args.markdown), "",
            header] + rows) + "\n"
        tmp = args.markdown + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.markdown)


if __name__ == "__main__":
    main()
