"""deeplab_ssl: DeepLabv3 / DeepLabv3+ with the structural similarity loss (SSL).

Public API: `build_deeplab` (the models), `SSLoss` and `get_loss` (the loss family),
`cross_replica_loss` (the loss of a global batch in a distributed loop). Submodules:
`losses`, `model`, `datasets`, `training`, `inference` (prediction; the `Predictor` interface),
`evaluation`, `visualization`, `serving` and `tflite` (the exports and their predictors).
"""
import os
import re
import sys

# TensorFlow's start-up lines that say nothing on a machine without NVIDIA's driver: absl's
# pre-InitializeLog warning, the oneDNN notice, "Could not find cuda drivers", the cuInit
# failure, the CPU-feature notice (TF_CPP_MIN_LOG_LEVEL does not hide them all).
_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"Could not find cuda drivers|failed call to cuInit|cpu_feature_guard|"
    r"To enable the following instructions")


def _import_tensorflow_quietly():
    """Imports TensorFlow with the C-level stderr captured, then prints what was captured but
    _STARTUP_NOISE: a failing import is still shown whole. (The cuInit ERROR line of the first
    device listing is hidden by TF_CPP_MIN_LOG_LEVEL=3.)"""
    import tempfile
    try:
        saved = os.dup(2)
    except OSError:  # No stderr to quiet (a daemon): import as is.
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _STARTUP_NOISE.search(line)))


# Before TensorFlow is imported. On a machine with NVIDIA's driver every line may matter; a
# TF_CPP_MIN_LOG_LEVEL set by the user, or absl's --verbosity on the command line, shows them.
if not os.path.exists("/proc/driver/nvidia") and "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # And later C++ noise (the cuInit ERROR line).
    if not any(arg.startswith(("--verbosity", "-v")) for arg in getattr(sys, "argv", [])[1:]):
        _import_tensorflow_quietly()

from deeplab_ssl.losses import SSLoss  # noqa: E402
from deeplab_ssl.losses import cross_replica_loss  # noqa: E402
from deeplab_ssl.losses import get_loss  # noqa: E402
from deeplab_ssl.model import build_deeplab  # noqa: E402

__version__ = "0.1.0"
__all__ = ["SSLoss", "build_deeplab", "cross_replica_loss", "get_loss"]
