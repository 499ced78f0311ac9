"""deeplab_ssl: DeepLabv3 / DeepLabv3+ with the structural similarity loss (SSL).

Public API: `build_deeplab` (the models), `SSLoss` and `get_loss` (the loss family),
`cross_replica_loss` (the loss of a global batch in a distributed loop). Submodules:
`losses`, `model`, `datasets`, `training`, `evaluation`, `visualization`, `serving`.
"""
import os

# Before TensorFlow is imported: on a machine without NVIDIA's driver, TF's C++ ERROR line
# "failed call to cuInit" is noise (its Python errors still show). A value set by the user wins.
if not os.path.exists("/proc/driver/nvidia"):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from deeplab_ssl.losses import SSLoss  # noqa: E402
from deeplab_ssl.losses import cross_replica_loss  # noqa: E402
from deeplab_ssl.losses import get_loss  # noqa: E402
from deeplab_ssl.model import build_deeplab  # noqa: E402

__version__ = "0.1.0"
__all__ = ["SSLoss", "build_deeplab", "cross_replica_loss", "get_loss"]
