"""Issue 17's GPU check: the SSL and the DeepLab models on the JAX backend, one command.

On one GPU (about 8 minutes on an H200), in one run:
1. The SSL's NumPy reference tests of tests/test_backends.py (loss and gradient; window sizes
   1, 3, 7; Table 3's switches), on the device.
2. Forward + backward (loss and d loss / d logits, one jitted function) of ssl, bce and
   softmax_ce on float32 logits of --loss_shape: the time, median over interleaved rounds (one
   call of each loss per round, in rotating order) and the median of the per-round ratios to
   BCE; the peak device memory, each loss in its own subprocess (jax's peak_bytes_in_use
   minus the bytes in use once the inputs are on the device: what the loss adds, its gradient
   included), and XLA's own figure for the compiled function (temporaries + outputs).
3. A training step (forward, loss, backward, SGD with momentum; jitted, state donated) of
   DeepLabv3+ (--variants, output stride 16, decoder at 4, ASPP rates 6, 12, 18 past
   mobilenet_v2) at --crop, --batch, under mixed_bfloat16, with each of the three losses,
   side by side: interleaved rounds of --steps steps, ratios to BCE per round.
Prints the tables, the issue's targets (SSL forward + backward <= 1.2x BCE's time and <= 1.5x
its memory; a training step with SSL <= 3% slower than with BCE), and writes --output (JSON).
Exits 1 when a reference test fails.

    pip install -e '.[test,jax]' 'jax[cuda12]'
    python benchmarks/gpu_check.py                       # the GPU check (defaults)
    python benchmarks/gpu_check.py --device=cpu --loss_shape=2,65,65,21 --crop=65 --batch=2 \\
        --rounds=3 --steps=2 --variants=mobilenet_v2      # a CPU run with small shapes

TensorFlow is imported by the package (tf.data) but hidden from the GPU first, so that JAX
has the device to itself.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

LOSSES = ("bce", "ssl", "softmax_ce")  # BCE first: the reference of the ratios.
NUM_CLASSES_OF_STEP = 21
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--loss_shape", default="16,513,513,21",
                        help="B,H,W,C of the logits of the loss timings")
    parser.add_argument("--variants", default="mobilenet_v2,xception_65",
                        help="DeepLabv3+ backbones of the training steps ('' for none)")
    parser.add_argument("--crop", type=int, default=513)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of the loss timings (default 30 on GPU, 5 on CPU); the "
                             "training steps take a third of them, at least 3")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--output", default="gpu_check.json")
    parser.add_argument("--measure_memory", choices=LOSSES, default=None,
                        help=argparse.SUPPRESS)  # the subprocess of one loss's memory
    args = parser.parse_args(argv)
    args.loss_shape = tuple(int(v) for v in args.loss_shape.split(","))
    args.variants = [v for v in args.variants.split(",") if v]
    if args.rounds is None:
        args.rounds = 30 if args.device == "gpu" else 5
    return args


def set_up(device):
    """The environment of a JAX run on `device`, before JAX, Keras and TensorFlow load."""
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["JAX_PLATFORMS"] = "cuda" if device == "gpu" else "cpu"
    # A second run (after a timeout) reuses the first one's compilations.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                          os.path.join(tempfile.gettempdir(), "deeplab_ssl_gpu_check_cache"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.join(REPOSITORY, "tests"))  # the NumPy references
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # before TF's runtime starts: JAX's device


def device_arrays(*arrays):
    import jax
    return [jax.block_until_ready(jax.device_put(a)) for a in arrays]


def loss_function(name):
    """jitted (logits, labels) -> (loss, d loss / d logits) of the loss `name`."""
    import jax
    from deeplab_ssl import losses
    loss = losses.get_loss(name)
    return jax.jit(jax.value_and_grad(lambda logits, labels: loss(labels, logits)))


def loss_inputs(shape):
    """(logits float32 [B, H, W, C], labels int32 [B, H, W]) on the device: test_losses'
    blocky labels (3x3 blocks, ignored blocks) and N(0, 2.5) logits."""
    from test_losses import random_batch
    labels, logits = random_batch(0, shape=shape)
    return device_arrays(logits, labels)


def xla_bytes(compiled):
    """XLA's temporaries + outputs of a compiled function, in bytes (None if not reported)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return analysis.temp_size_in_bytes + analysis.output_size_in_bytes


def measure_memory(name, shape):
    """In its own process: what one forward + backward of `name` adds to the device's peak."""
    import jax
    device = jax.devices()[0]
    logits, labels = loss_inputs(shape)
    before = device.memory_stats()
    compiled = loss_function(name).lower(logits, labels).compile()
    jax.block_until_ready(compiled(logits, labels))
    after = device.memory_stats()
    peak = None if before is None else after["peak_bytes_in_use"] - before["bytes_in_use"]
    return {"peak_bytes": peak, "xla_bytes": xla_bytes(compiled)}


def memory_in_subprocess(name, args):
    command = [sys.executable, os.path.abspath(__file__), f"--measure_memory={name}",
               f"--device={args.device}", "--loss_shape=" + ",".join(map(str, args.loss_shape))]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"The memory run of {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def interleaved_times(functions, rounds):
    """{name: [seconds per round]}: one call of each function per round, in rotating order."""
    names = list(functions)
    times = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times, reference="bce"):
    """{name: {median_ms, ratio}}: ratio, the median over rounds of time / reference's time."""
    return {name: {"median_ms": 1e3 * statistics.median(values),
                   "ratio": statistics.median(v / r for v, r in zip(values, times[reference]))}
            for name, values in times.items()}


def reference_tests():
    """The SSL's reference tests of tests/test_backends.py, on the device: {name: error}."""
    import test_backends
    cases = [(f"window_size={k}", test_backends.test_ssl_matches_numpy_reference, (k,))
             for k in (1, 3, 7)]
    cases += [(f"ohem={o}, reweight={r}", test_backends.test_table3_switches_match_reference,
               (o, r)) for o, r in ((True, False), (False, True), (False, False))]
    failures = {}
    for name, test, arguments in cases:
        try:
            test(*arguments)
        except AssertionError as error:
            failures[name] = str(error)
    return {"cases": [name for name, _, _ in cases], "failures": failures}


def loss_timings(args):
    import jax
    logits, labels = loss_inputs(args.loss_shape)
    functions = {}
    for name in LOSSES:
        function = loss_function(name)
        jax.block_until_ready(function(logits, labels))  # compiles
        functions[name] = (lambda f: lambda: jax.block_until_ready(f(logits, labels)))(function)
    figures = summarize(interleaved_times(functions, args.rounds))
    for name in LOSSES:
        figures[name].update(memory_in_subprocess(name, args))
    for name in LOSSES:
        for key in ("peak_bytes", "xla_bytes"):
            value, reference = figures[name][key], figures["bce"][key]
            figures[name][key + "_ratio"] = value / reference if value and reference else None
    return figures


def model_options(variant):
    options = dict(output_stride=16, decoder_output_stride=4)
    if variant != "mobilenet_v2":
        options.update(atrous_rates=[6, 12, 18])
    return options


def train_step_function(model, loss, optimizer):
    """jitted step(state, images, labels) -> (loss, state), state = (trainable, non-trainable,
    optimizer variables) as arrays, donated: Keras' stateless JAX training loop."""
    import jax

    def loss_of(trainable, non_trainable, images, labels):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, images,
                                                     training=True)
        return loss(labels, logits), non_trainable
    value_and_gradient = jax.value_and_grad(loss_of, has_aux=True)

    def step(state, images, labels):
        trainable, non_trainable, optimizer_variables = state
        (value, non_trainable), gradients = value_and_gradient(trainable, non_trainable,
                                                               images, labels)
        trainable, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, gradients, trainable)
        return value, (trainable, non_trainable, optimizer_variables)
    return jax.jit(step, donate_argnums=0)


def train_step_timings(variant, args):
    """{loss: {median_ms (per step), ratio, xla_bytes}} for DeepLabv3+ `variant`."""
    import jax
    import keras
    import numpy as np
    from deeplab_ssl import losses
    from deeplab_ssl.model import build_deeplab
    from test_losses import random_batch
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_deeplab(variant, NUM_CLASSES_OF_STEP, **model_options(variant))
    shape = (args.batch, args.crop, args.crop, NUM_CLASSES_OF_STEP)
    labels = random_batch(1, shape=shape)[0]
    images = np.random.default_rng(1).uniform(0, 255, shape[:3] + (3,)).astype(np.float32)
    images, labels = device_arrays(images, labels)
    steps, states, xla = {}, {}, {}
    for name in LOSSES:
        optimizer = keras.optimizers.SGD(0.001, momentum=0.9)
        optimizer.build(model.trainable_variables)
        steps[name] = train_step_function(model, losses.get_loss(name), optimizer)
        # Each loss trains its own copy of the same initial state (copies: they are donated).
        state = tuple([jax.numpy.array(v.value, copy=True) for v in variables] for variables in (
            model.trainable_variables, model.non_trainable_variables, optimizer.variables))
        # Compiled once, ahead of time: XLA's memory figure and the function that runs.
        steps[name] = steps[name].lower(state, images, labels).compile()
        xla[name] = xla_bytes(steps[name])
        value, states[name] = steps[name](state, images, labels)
        jax.block_until_ready(value)

    def run(name):
        def steps_of_a_round():
            for _ in range(args.steps):
                value, states[name] = steps[name](states[name], images, labels)
            jax.block_until_ready(value)
        return steps_of_a_round
    times = interleaved_times({name: run(name) for name in LOSSES}, max(3, args.rounds // 3))
    figures = summarize({name: [t / args.steps for t in values] for name, values in
                         times.items()})
    for name in LOSSES:
        figures[name]["xla_bytes"] = xla[name]
    keras.mixed_precision.set_global_policy("float32")
    return figures


def megabytes(value):
    return "n/a" if value is None else f"{value / 2 ** 20:.1f}"


def ratio(value):
    return "n/a" if value is None else f"{value:.2f}"


def report(results, args):
    print(f"\nDevice: {results['device']}; jax {results['jax']}; keras {results['keras']}")
    reference = results["reference_tests"]
    print(f"Reference tests: {len(reference['cases']) - len(reference['failures'])} of "
          f"{len(reference['cases'])} passed" + "".join(
              f"\n  FAILED {name}: {error.splitlines()[0] if error else ''}"
              for name, error in reference["failures"].items()))
    shape = "x".join(map(str, args.loss_shape))
    print(f"\nForward + backward, float32 logits [{shape}], {args.rounds} rounds")
    print("| loss | ms | x BCE | peak MB | x BCE | XLA MB | x BCE |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, f in results["losses"].items():
        print(f"| {name} | {f['median_ms']:.2f} | {f['ratio']:.3f} | "
              f"{megabytes(f['peak_bytes'])} | {ratio(f['peak_bytes_ratio'])} | "
              f"{megabytes(f['xla_bytes'])} | {ratio(f['xla_bytes_ratio'])} |")
    for variant, figures in results["train_steps"].items():
        print(f"\nTraining step, DeepLabv3+ {variant}, crop {args.crop}, batch {args.batch}, "
              f"mixed_bfloat16, {args.steps} steps x {max(3, args.rounds // 3)} rounds")
        print("| loss | ms / step | x BCE | XLA MB |")
        print("| --- | ---: | ---: | ---: |")
        for name, f in figures.items():
            print(f"| {name} | {f['median_ms']:.1f} | {f['ratio']:.3f} | "
                  f"{megabytes(f['xla_bytes'])} |")
    print("\nTargets (issue 17, for the GPU):")
    for name, met in results["targets"].items():
        print(f"  {name}: {'met' if met else 'MISSED' if met is not None else 'n/a'}")


def targets(results):
    ssl = results["losses"]["ssl"]
    memory = ssl["peak_bytes_ratio"]
    found = {"ssl time <= 1.2x bce": ssl["ratio"] <= 1.2,
             "ssl peak memory <= 1.5x bce": None if memory is None else memory <= 1.5}
    for variant, figures in results["train_steps"].items():
        found[f"{variant} step with ssl <= 1.03x bce"] = figures["ssl"]["ratio"] <= 1.03
    return found


def main():
    args = parse_args()
    set_up(args.device)
    if args.measure_memory:
        print(json.dumps(measure_memory(args.measure_memory, args.loss_shape)))
        return 0
    import jax
    import keras
    try:
        device = jax.devices()[0]
    except RuntimeError as error:
        raise SystemExit(f"JAX sees no {args.device} ({error}); for a GPU: "
                         "pip install 'jax[cuda12]'") from None
    results = {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__,
               "keras": keras.__version__, "arguments": {
                   k: v for k, v in vars(args).items() if k != "measure_memory"}}
    start = time.perf_counter()

    def done(part, value):
        """Keeps `value` as results[part] and writes the results so far: a run stopped by a
        time limit leaves what it measured."""
        results[part] = value
        results["seconds"] = time.perf_counter() - start
        with open(args.output, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=2)
        print(f"[{results['seconds']:.0f} s] {part} done", flush=True)
    done("reference_tests", reference_tests())
    done("losses", loss_timings(args))
    done("train_steps", {})
    for variant in args.variants:
        done("train_steps", {**results["train_steps"],
                             variant: train_step_timings(variant, args)})
    done("targets", targets(results))
    report(results, args)
    print(f"\n{results['seconds']:.0f} s; written to {args.output}")
    return 1 if results["reference_tests"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
