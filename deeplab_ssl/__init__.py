"""deeplab_ssl: DeepLabv3 / DeepLabv3+ with the structural similarity loss (SSL).

Public API: `build_deeplab` (the models), `SSLoss` and `get_loss` (the loss family),
`cross_replica_loss` (the loss of a global batch in a distributed loop). Submodules:
`losses`, `model`, `datasets`, `training`, `evaluation`, `visualization`, `serving`.
"""
from deeplab_ssl.losses import SSLoss
from deeplab_ssl.losses import cross_replica_loss
from deeplab_ssl.losses import get_loss
from deeplab_ssl.model import build_deeplab

__version__ = "0.1.0"
__all__ = ["SSLoss", "build_deeplab", "cross_replica_loss", "get_loss"]
