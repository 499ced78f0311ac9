"""The SSL's CPU kernel (ssl_kernel.cc): build, load, call.

One op, `SslWeights`, computes in one pass over the logits what the SSL's XLA path computes
(ssl.SSLoss with implementation="xla"): the example weights and the sums sum(m BCE),
sum(weight BCE) and M; measured ~2x faster on CPU (docs/benchmarks.md). It is compiled for
the installed TensorFlow and this machine's CPU (-march=native) by

    python -m deeplab_ssl.losses.build_kernel     (`make install` runs it)

into a library next to the source, named after the TensorFlow version and the source: after an
upgrade of TensorFlow or a change of ssl_kernel.cc, SSLoss falls back to the XLA path until the
kernel is built again (never a library built from another source). The kernel has
no GPU version and no XLA version: where a GPU is visible, SSLoss uses the XLA path, and inside
a function compiled with XLA the op fails to compile (see ssl_weights).
"""
import functools
import hashlib
import os
import pathlib
import subprocess

import tensorflow as tf

SOURCE = pathlib.Path(__file__).with_name("ssl_kernel.cc")
# -fno-math-errno lets the square roots vectorize; -ffp-contract=off keeps a value the same
# whether a vectorized loop or its scalar remainder computes it (no FMA in one only), so the
# results do not depend on how the batch is split; -w silences TensorFlow's headers.
_COMPILE_FLAGS = ["-shared", "-fPIC", "-O3", "-march=native", "-fopenmp-simd",
                  "-fno-math-errno", "-ffp-contract=off", "-w"]


def _native_flags(compiler):
    """-march=native, less AVX512-FP16 where the CPU has it: the Eigen headers of TensorFlow
    2.21 do not compile with it under g++ 12 (`predux_half_dowto4`), and the kernel is float32."""
    try:
        macros = subprocess.run([compiler, "-march=native", "-dM", "-E", "-"], input="",
                                capture_output=True, text=True, check=False).stdout
    except OSError:
        return []  # build() reports the missing compiler.
    return ["-mno-avx512fp16"] if "__AVX512FP16__" in macros else []


def library_path():
    """The kernel library for the installed TensorFlow and this ssl_kernel.cc, in its folder: a
    pathlib.Path."""
    source_hash = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return SOURCE.with_name(f"_ssl_kernel_tf{tf.__version__}_{source_hash}.so")


def build(path=None, compiler=None):
    """Compiles ssl_kernel.cc into `path` (default library_path()); returns the path.

    Written under a temporary name and renamed: a concurrent or killed build leaves no broken
    library. `compiler` defaults to $CXX, else g++.

    Raises:
      RuntimeError: the compiler failed; the message has its command and output.
    """
    path = pathlib.Path(path or library_path())
    compiler = compiler or os.environ.get("CXX", "g++")
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    command = [compiler, *_COMPILE_FLAGS, *_native_flags(compiler), str(SOURCE), "-o", str(temporary),
               *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise RuntimeError(f"Cannot run the compiler {compiler!r} for {SOURCE}: {error}") from None
    if result.returncode != 0:
        temporary.unlink(missing_ok=True)
        raise RuntimeError(f"Building {SOURCE} failed ({' '.join(command)}):\n{result.stderr}")
    os.replace(temporary, path)
    return path


# The op's name scope. XLA's error for an op it cannot compile names the op's node only, so the
# node's name carries the way out.
XLA_NAME_SCOPE = "no_XLA_kernel__use_SSLoss_implementation_xla_with_jit_compile"


@functools.cache
def load():
    """The kernel's op module, or None if it is not built for this TensorFlow or fails to load."""
    path = library_path()
    if not path.exists():
        return None
    try:
        library = tf.load_op_library(str(path))
    except (tf.errors.NotFoundError, OSError) as error:
        tf.get_logger().warning("SSLoss: the kernel library %s does not load (%s); using the "
                                "XLA path. Rebuild it: python -m deeplab_ssl.losses.build_kernel",
                                path, error)
        return None
    _register_no_gradient()
    return library


@functools.cache
def _register_no_gradient():
    """Once per process: the weights are constants of the loss's gradient (stop-gradient)."""
    tf.no_gradient("SslWeights")


def available():
    """True when SSLoss(implementation="auto") uses the kernel: it loads and no GPU is visible."""
    return load() is not None and not tf.config.list_logical_devices("GPU")


def ssl_weights(logits, labels, valid, window, c4, ohem, threshold, reweight):
    """The SSL's example weights and forward sums, from the kernel (see SSLoss).

    Args:
      logits: float32 [B, H, W, C], no gradient.
      labels: int32 [B, H, W], -1 at invalid pixels.
      valid: float32 [B, H, W, 1], the valid mask m.
      window: the normalized 1-D Gaussian weights (odd length k), floats.
      c4: float, the stability constant of Eq. 10.
      ohem: bool, f = (e > threshold) at valid pixels; else f = m.
      threshold: float beta e_max (read with ohem only).
      reweight: bool, weight = e f; else f.

    Returns:
      weight: float32 [B, H, W, C], 0 at invalid pixels.
      sums: float32 [3], sum(m BCE), sum(weight BCE), M = sum(f).

    Raises:
      RuntimeError: the kernel is not built for this TensorFlow.
      tf.errors.InvalidArgumentError, when run: inside a function compiled with XLA (Keras'
        jit_compile=True), "Detected unsupported operations ... SslWeights": its node's
        name says what to do instead (XLA_NAME_SCOPE).
    """
    library = load()
    if library is None:
        raise RuntimeError(f"The SSL kernel is not built for TensorFlow {tf.__version__} "
                           f"({library_path()} is missing): run "
                           "python -m deeplab_ssl.losses.build_kernel")
    with tf.name_scope(XLA_NAME_SCOPE):
        return library.ssl_weights(logits, labels, valid, window=[float(w) for w in window],
                                   c4=float(c4), ohem=bool(ohem), threshold=float(threshold),
                                   reweight=bool(reweight))

