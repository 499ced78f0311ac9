"""Align-corners bilinear resizing on TensorFlow: TF's ResizeBilinear op against the keras.ops
version of core/utils.resize_bilinear, forward + backward, side by side.

The three resizes of a DeepLabv3+ at --crop (output stride 16, decoder at 4): image pooling
[B, 1, 1, 256] to the features, the decoder's features [B, crop/16, crop/16, 256] to stride 4,
the logits [B, crop/4, crop/4, 21] to the crop. Each round runs every (resize, way) once, in
rotating order; the ratio is the median over rounds of (keras.ops time / TF op time) in the
same round, so a slow phase of a shared machine hits both sides. Both in a tf.function (the
graph runs of train.py on CPU), and with --jit in one compiled with XLA too.

    python benchmarks/resize_bench.py --crop 513 --batch 2 --rounds 9 [--jit]
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deeplab_ssl.core import utils  # noqa: E402


def shapes(crop, batch):
    """{name: (input shape, output size)} of the three resizes of a DeepLabv3+ at `crop`."""
    stride_16, stride_4 = (crop - 1) // 16 + 1, (crop - 1) // 4 + 1
    return {"image_pooling": ((batch, 1, 1, 256), (stride_16, stride_16)),
            "decoder": ((batch, stride_16, stride_16, 256), (stride_4, stride_4)),
            "logits": ((batch, stride_4, stride_4, 21), (crop, crop))}


def forward_backward(resize, jit_compile):
    """A tf.function: sum(resize(x) * w) and its gradient w.r.t. x."""
    def run(x, w):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = tf.reduce_sum(resize(x, tuple(w.shape[1:3])) * w)
        return value, tape.gradient(value, x)
    return tf.function(run, jit_compile=jit_compile)


def tf_op(x, size):
    return tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crop", type=int, default=513)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--jit", action="store_true", help="also inside XLA (jit_compile)")
    args = parser.parse_args()
    tf.get_logger().setLevel("ERROR")  # one tf.function per case: retracing is expected.
    rng = np.random.default_rng(0)
    cases = {}
    for name, (shape, size) in shapes(args.crop, args.batch).items():
        x = tf.constant(rng.normal(size=shape).astype(np.float32))
        w = tf.constant(rng.normal(size=(shape[0], *size, shape[3])).astype(np.float32))
        for jit in ([False, True] if args.jit else [False]):
            ways = {"tf_op": forward_backward(tf_op, jit),
                    "keras_ops": forward_backward(utils.resize_bilinear, jit)}
            outputs = {way: fn(x, w) for way, fn in ways.items()}  # warm-up: tracing
            # The same resize (tests/test_backends.py checks it element by element).
            np.testing.assert_allclose(outputs["tf_op"][0].numpy(),
                                       outputs["keras_ops"][0].numpy(), rtol=1e-5)
            cases[(name, "xla" if jit else "graph")] = (ways, (x, w))
    times = {(case, way): [] for case, (ways, _) in cases.items() for way in ways}
    for round_index in range(args.rounds):
        order = list(times)
        order = order[round_index % len(order):] + order[:round_index % len(order)]
        for case, way in order:
            function, inputs = cases[case][0][way], cases[case][1]
            start = time.perf_counter()
            value, gradient = function(*inputs)
            gradient.numpy()
            times[(case, way)].append(time.perf_counter() - start)
    print(f"crop {args.crop}, batch {args.batch}, {args.rounds} rounds; forward + backward")
    print("| resize | compiled | TF op ms | keras.ops ms | keras.ops / TF op (median of rounds) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for case in cases:
        op, portable = times[(case, "tf_op")], times[(case, "keras_ops")]
        ratio = statistics.median(p / o for p, o in zip(portable, op))
        print(f"| {case[0]} | {case[1]} | {1e3 * statistics.median(op):.2f} | "
              f"{1e3 * statistics.median(portable):.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
