"""Forward + backward time and peak memory of the loss family, side by side with BCE.

Usage (from the repository root):
  .venv/bin/python benchmarks/loss_bench.py                    # both shapes of issue 2
  .venv/bin/python benchmarks/loss_bench.py --shapes 4,257,257,21 --rounds 7
  .venv/bin/python benchmarks/loss_bench.py --conv             # full vs separable window
  .venv/bin/python benchmarks/loss_bench.py --portable         # SSL's portable path, TF + JAX

Time: every loss is a tf.function returning (loss, d loss / d logits) for float32 logits. After
a warm-up call each, the losses run in rounds, one call of each loss per round in a rotating
order, so slow phases of a shared machine hit all of them alike; printed are the median wall
and process CPU times and the medians over rounds of the ratios to BCE in the same round (on a
loaded machine CPU time is the steadier figure).
Peak memory: each loss runs (warm-up + 2 calls) in its own subprocess, which reports how far
its peak resident set (VmHWM of /proc/self/status, reset once the inputs are built) rose above
the resident set at that point. The same loss on tiny logits [1, 33, 33, C] gives its fixed
cost (tracing, runtime, and for the SSL the XLA compiler, ~80 MB once per process and shape).
Printed are the fixed cost, the rise minus the fixed cost (the memory that grows with the
logits) and its ratio to BCE's.

--portable: the SSL's portable path (implementation="xla", what GPUs and JAX run) against BCE,
compiled with XLA as a whole: on TensorFlow, tf.function(jit_compile=True) in this process,
and on JAX, jax.jit(value_and_grad) in a subprocess with KERAS_BACKEND=jax (the backend is
fixed per process), side by side. Time: as above (wall; ratios per round). Memory: on JAX,
XLA's own figure for the compiled function, temporaries + outputs (memory_analysis()); on
TensorFlow, which shows no such figure, the extra peak resident set as above.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deeplab_ssl import losses  # noqa: E402

LOSSES = ("bce", "ssl", "ssl_xla", "softmax_ce", "ssim7", "affinity", "bce_autodiff")
PORTABLE_LOSSES = ("bce", "ssl")  # --portable: BCE and the SSL's portable path
TINY_SHAPE = (1, 33, 33)  # + C: logits small enough that a loss's peak is its fixed cost
# The affinity loss needs ~32x BCE's memory: ~1.6 GB at [4, 257, 257, 21], over 12 GB at
# [8, 513, 513, 21]; it is left out of larger logits.
AFFINITY_MAX_ELEMENTS = 4 * 257 * 257 * 21


def make_inputs(shape, seed=0):
    """Blocky labels (16x16 regions, 5% ignored regions) and N(0, 2) float32 logits."""
    batch, height, width, num_classes = shape
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, num_classes, size=(batch, -(-height // 16), -(-width // 16)))
    blocks[rng.random(blocks.shape) < 0.05] = 255
    labels = np.repeat(np.repeat(blocks, 16, axis=1), 16, axis=2)[:, :height, :width]
    logits = rng.normal(0.0, 2.0, size=shape).astype(np.float32)
    return tf.constant(labels.astype(np.int32)), tf.constant(logits)


def plain_sigmoid_cross_entropy(labels, logits):
    """Reference only: the same BCE as written plainly, with TF's op and autodiff."""
    valid = tf.cast(labels != 255, tf.float32)[..., None]
    one_hot = tf.one_hot(tf.where(labels != 255, labels, -1), logits.shape[-1])
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=one_hot, logits=logits)
    return tf.reduce_sum(bce * valid) / tf.reduce_sum(valid)


def loss_and_gradient_fn(name, jit_compile=False):
    """tf.function (labels, logits) -> (loss, gradient w.r.t. logits), compiled with XLA as a
    whole if jit_compile."""
    if name == "bce_autodiff":
        loss = plain_sigmoid_cross_entropy
    elif name == "ssl_xla":  # The SSL without its CPU kernel.
        loss = losses.get_loss("ssl", implementation="xla")
    else:
        loss = losses.get_loss(name)

    @tf.function(jit_compile=jit_compile)
    def run(labels, logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = loss(labels, logits)
        return value, tape.gradient(value, logits)
    return run


def time_losses(shape, names, rounds, jit_compile=False):
    labels, logits = make_inputs(shape)
    functions = {name: loss_and_gradient_fn(name, jit_compile) for name in names}
    for function in functions.values():
        tf.nest.map_structure(lambda t: t.numpy(), function(labels, logits))
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            tf.nest.map_structure(lambda t: t.numpy(), functions[name](labels, logits))
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def peak_memory_mb(shape, name, jit_compile=False):
    """Runs `name` in a subprocess; returns its peak resident set in MB."""
    command = [sys.executable, __file__, "--worker", name,
               "--shapes", ",".join(str(d) for d in shape)] + ["--jit"] * jit_compile
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_mb"]


def _status_mb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024.0


def worker(shape, name, jit_compile):
    labels, logits = make_inputs(shape)
    # Reset the peak resident set (VmHWM) to the current one, so that the transient float64
    # arrays of make_inputs do not hide the loss's own peak. Not getrusage's ru_maxrss: it can
    # be neither reset nor trusted (Linux carries the parent's peak into it across exec).
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    resident_mb = _status_mb("VmRSS:")
    function = loss_and_gradient_fn(name, jit_compile)
    for _ in range(3):
        tf.nest.map_structure(lambda t: t.numpy(), function(labels, logits))
    print(json.dumps({"peak_mb": _status_mb("VmHWM:") - resident_mb}))


def benchmark_shape(shape, names, rounds):
    print(f"\n== logits {list(shape)} float32, {rounds} rounds ==", flush=True)
    wall, cpu = time_losses(shape, names, rounds)
    fixed_mb = {name: peak_memory_mb(TINY_SHAPE[:3] + shape[3:], name) for name in names}
    extra_mb = {name: peak_memory_mb(shape, name) - fixed_mb[name] for name in names}
    print(f"{'loss':<12}{'wall s':>8}{'x BCE':>7}{'cpu s':>8}{'x BCE':>7}"
          f"{'fixed MB':>10}{'extra peak MB':>15}{'x BCE':>7}")

    def ratio(times, name):
        return statistics.median([t / b for t, b in zip(times[name], times["bce"])])
    for name in names:
        print(f"{name:<12}{statistics.median(wall[name]):>8.3f}{ratio(wall, name):>7.2f}"
              f"{statistics.median(cpu[name]):>8.3f}{ratio(cpu, name):>7.2f}"
              f"{fixed_mb[name]:>10.0f}{extra_mb[name]:>15.0f}"
              f"{extra_mb[name] / extra_mb['bce']:>7.2f}", flush=True)


def median_ratios(times, reference="bce"):
    """{name: median over rounds of time / the reference's time in the same round}."""
    return {name: statistics.median(t / r for t, r in zip(values, times[reference]))
            for name, values in times.items()}


def jax_worker(shapes, rounds):
    """In a KERAS_BACKEND=jax process: per shape, {name: {"ms", "ratio", "xla_mb"}} of BCE and
    the SSL's portable path, jax.jit(value_and_grad), as JSON on the last line."""
    import jax
    results = {}
    for shape in shapes:
        labels, logits = (jax.device_put(t.numpy()) for t in make_inputs(shape))
        compiled = {}
        for name in PORTABLE_LOSSES:
            loss = losses.get_loss("ssl", implementation="xla") if name == "ssl" else (
                losses.get_loss(name))
            function = jax.jit(jax.value_and_grad(lambda x, y, loss=loss: loss(y, x)))
            compiled[name] = function.lower(logits, labels).compile()
            jax.block_until_ready(compiled[name](logits, labels))
        times = {name: [] for name in compiled}
        for round_index in range(rounds):
            shift = round_index % len(PORTABLE_LOSSES)
            for name in PORTABLE_LOSSES[shift:] + PORTABLE_LOSSES[:shift]:
                start = time.perf_counter()
                jax.block_until_ready(compiled[name](logits, labels))
                times[name].append(time.perf_counter() - start)
        ratios = median_ratios(times)
        results[",".join(map(str, shape))] = {name: {
            "ms": 1e3 * statistics.median(times[name]), "ratio": ratios[name],
            "xla_mb": (compiled[name].memory_analysis().temp_size_in_bytes
                       + compiled[name].memory_analysis().output_size_in_bytes) / 1e6}
            for name in compiled}
    print(json.dumps(results))


def benchmark_portable(shapes, rounds):
    """The SSL's portable path against BCE, on TensorFlow (jit_compile) and on JAX."""
    command = [sys.executable, __file__, "--jax_worker", "--rounds", str(rounds), "--shapes",
               *(",".join(map(str, shape)) for shape in shapes)]
    jax_run = subprocess.run(command, capture_output=True, text=True, check=False,
                             env=dict(os.environ, KERAS_BACKEND="jax"))
    if jax_run.returncode != 0:
        raise RuntimeError(f"The JAX run failed:\n{jax_run.stderr[-3000:]}")
    jax_results = json.loads(jax_run.stdout.strip().splitlines()[-1])
    print("ssl: implementation='xla'; time: wall, median of per-round ratios to BCE; memory: TF "
          "extra peak RSS (fixed cost subtracted), JAX XLA temporaries + outputs")
    for shape in shapes:
        print(f"\n== logits {list(shape)} float32, {rounds} rounds ==", flush=True)
        wall, _ = time_losses(shape, ["bce", "ssl_xla"], rounds, jit_compile=True)
        wall["ssl"] = wall.pop("ssl_xla")
        ratios = median_ratios(wall)
        memory = {name: peak_memory_mb(shape, name, True)
                  - peak_memory_mb(TINY_SHAPE + shape[3:], name, True)
                  for name in ("bce", "ssl_xla")}
        memory["ssl"] = memory.pop("ssl_xla")
        print(f"{'backend':<18}{'loss':<6}{'ms':>8}{'x BCE':>7}{'MB':>9}{'x BCE':>7}")
        for name in PORTABLE_LOSSES:
            print(f"{'tensorflow (jit)':<18}{name:<6}{1e3 * statistics.median(wall[name]):>8.1f}"
                  f"{ratios[name]:>7.2f}{memory[name]:>9.1f}{memory[name] / memory['bce']:>7.2f}")
        figures = jax_results[",".join(map(str, shape))]
        for name in PORTABLE_LOSSES:
            print(f"{'jax':<18}{name:<6}{figures[name]['ms']:>8.1f}{figures[name]['ratio']:>7.2f}"
                  f"{figures[name]['xla_mb']:>9.1f}"
                  f"{figures[name]['xla_mb'] / figures['bce']['xla_mb']:>7.2f}", flush=True)


def benchmark_conv(rounds):
    """Full k x k versus separable window on 64 channels of [4, 257, 257]; batched or not."""
    from deeplab_ssl.losses import local_stats
    x = tf.random.uniform([4, 257, 257, 64])
    print("window  full k x k s  separable s")
    for window_size in (3, 5, 7, 11):
        weights = local_stats.gaussian_window(window_size, 1.5)
        column = np.sqrt(np.diag(weights))[:, None]
        full = tf.constant(np.tile(weights[:, :, None, None], [1, 1, 64, 1]))
        col = tf.constant(np.tile(column[:, :, None, None], [1, 1, 64, 1]).astype(np.float32))
        row = tf.transpose(col, [1, 0, 2, 3])
        variants = {
            "full": tf.function(lambda x: tf.nn.depthwise_conv2d(x, full, [1] * 4, "SAME")),
            "separable": tf.function(lambda x: tf.nn.depthwise_conv2d(
                tf.nn.depthwise_conv2d(x, col, [1] * 4, "SAME"), row, [1] * 4, "SAME")),
        }
        results = {}
        for key, function in variants.items():
            function(x).numpy()
            runs = []
            for _ in range(rounds):
                start = time.perf_counter()
                function(x).numpy()
                runs.append(time.perf_counter() - start)
            results[key] = statistics.median(runs)
        print(f"{window_size:>6}{results['full']:>14.4f}{results['separable']:>13.4f}")
    # Batching: one convolution over the concatenated maps (then split) versus one per map.
    maps = [tf.random.uniform([4, 257, 257, 21]) for _ in range(3)]
    valid = tf.ones([4, 257, 257, 1])
    variants = {
        "concatenated": tf.function(lambda maps, valid: tf.split(local_stats.local_sums(
            tf.concat(maps + [valid], -1), 3, 1.5), [21, 21, 21, 1], -1)),
        "separate": tf.function(lambda maps, valid: [
            local_stats.local_sums(t, 3, 1.5) for t in maps + [valid]]),
    }
    for key, function in variants.items():
        function(maps, valid)
        runs = []
        for _ in range(rounds):
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), function(maps, valid))
            runs.append(time.perf_counter() - start)
        print(f"3 maps of 21 channels + mask, k=3, {key} convolutions: "
              f"{statistics.median(runs):.4f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["4,257,257,21", "8,513,513,21"],
                        help="logits shapes B,H,W,C")
    parser.add_argument("--losses", default=",".join(LOSSES),
                        help="comma-separated get_loss names (bce is always included), "
                        "ssl_xla (the SSL without its CPU kernel), or bce_autodiff: TF's "
                        "sigmoid CE op with autodiff, for reference")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per loss")
    parser.add_argument("--conv", action="store_true",
                        help="only compare full and separable Gaussian windows")
    parser.add_argument("--portable", action="store_true",
                        help="only the SSL's portable path against BCE, on TensorFlow with "
                        "jit_compile and on JAX")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jax_worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = [tuple(int(d) for d in s.split(",")) for s in args.shapes]
    if args.worker:
        worker(shapes[0], args.worker, args.jit)
        return
    if args.jax_worker:
        jax_worker(shapes, args.rounds)
        return
    if args.conv:
        benchmark_conv(args.rounds)
        return
    if args.portable:
        benchmark_portable(shapes, args.rounds)
        return
    names = ["bce"] + [n for n in args.losses.split(",") if n != "bce"]
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, tf.function (ssl: the SSL's CPU "
          "kernel; ssl_xla: its XLA path, both as in the library)")
    for shape in shapes:
        shape_names = names
        if "affinity" in names and np.prod(shape) > AFFINITY_MAX_ELEMENTS:
            print(f"\n(affinity left out of {list(shape)}: ~32x BCE's memory)")
            shape_names = [n for n in names if n != "affinity"]
        benchmark_shape(shape, shape_names, args.rounds)


if __name__ == "__main__":
    main()
