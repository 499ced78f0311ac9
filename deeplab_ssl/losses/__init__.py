"""The loss family: SSL and the baselines the paper compares against.

Every loss is a keras.losses.Loss with `sums(y_true, y_pred)`, `loss_from_sums(sums)` and
`terms(sums)`; see base.py and `cross_replica_loss` for the exact loss of a global batch across
replicas. They are written with keras.ops and run on the TensorFlow, JAX and PyTorch backends;
backend.py holds what differs between them.
"""
from deeplab_ssl.losses.affinity import AffinityFieldLoss
from deeplab_ssl.losses.base import SumsLoss
from deeplab_ssl.losses.base import cross_replica_loss
from deeplab_ssl.losses.cross_entropy import SigmoidCrossEntropy
from deeplab_ssl.losses.cross_entropy import SoftmaxCrossEntropy
from deeplab_ssl.losses.lovasz import LovaszSoftmaxLoss
from deeplab_ssl.losses.rmi import RMILoss
from deeplab_ssl.losses.ssim import SSIMLoss
from deeplab_ssl.losses.ssl import SSLoss
from deeplab_ssl.losses.ssl_softmax import SoftmaxSSLoss

# name -> (class, default keyword arguments); get_loss's kwargs override the defaults.
_LOSSES = {
    "ssl": (SSLoss, {}),
    "bce": (SigmoidCrossEntropy, {}),
    "softmax_ce": (SoftmaxCrossEntropy, {}),
    # deeplab's documented example of hard pixel mining: the top 25% of the pixels.
    "topk_ce": (SoftmaxCrossEntropy, {"top_k_percent_pixels": 0.25}),
    "ssim7": (SSIMLoss, {"contrast_structure_only": False}),
    "ssim9": (SSIMLoss, {"contrast_structure_only": True}),
    "affinity": (AffinityFieldLoss, {}),
    "lovasz": (LovaszSoftmaxLoss, {}),
    "rmi": (RMILoss, {}),
    # Beyond the paper (ssl_softmax.py): the SSL's structural weight on softmax CE, then also
    # on deeplab's top 25% of the pixels, then also normalised per class.
    "ssl_softmax": (SoftmaxSSLoss, {}),
    "ssl_softmax_topk": (SoftmaxSSLoss, {"top_k_percent_pixels": 0.25}),
    "ssl_softmax_topk_balanced": (SoftmaxSSLoss, {"top_k_percent_pixels": 0.25,
                                                  "class_balanced": True}),
}
LOSS_NAMES = tuple(_LOSSES)
# The train.py flag of each constructor argument, per loss class.
_SSL_WINDOW_FLAGS = {"window_size": "ssl_window_size", "sigma": "ssl_sigma",
                     "ce_weight": "ssl_ce_weight"}
_MINING_FLAGS = {"top_k_percent_pixels": "top_k_percent_pixels",
                 "hard_example_mining_step": "hard_example_mining_step"}
_FLAGS = {
    SSLoss: {**_SSL_WINDOW_FLAGS, "beta": "ssl_beta", "ohem": "ssl_ohem",
             "reweight": "ssl_reweight", "warmup_steps": "ssl_warmup_steps"},
    SigmoidCrossEntropy: {},
    SoftmaxCrossEntropy: _MINING_FLAGS,
    SSIMLoss: _SSL_WINDOW_FLAGS,
    AffinityFieldLoss: {"kld_margin": "affinity_kld_margin"},
    LovaszSoftmaxLoss: {"per_image": "lovasz_per_image"},
    RMILoss: {"radius": "rmi_radius", "pool_size": "rmi_pool_size",
              "ce_weight": "ssl_ce_weight"},
    SoftmaxSSLoss: {**_SSL_WINDOW_FLAGS, "beta": "ssl_beta",
                    "top_k_percent_pixels": "top_k_percent_pixels",
                    "class_balanced": "ssl_class_balanced"},
}


def get_loss(name, **kwargs):
    """Builds the loss called `name` (one of LOSS_NAMES) with `kwargs` for its constructor.

    Example: get_loss("ssl", window_size=7), get_loss("topk_ce", hard_example_mining_step=100000,
    step=optimizer.iterations).

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if name not in _LOSSES:
        raise ValueError(f"Unknown loss {name!r}; known losses: {', '.join(LOSS_NAMES)}")
    loss_class, defaults = _LOSSES[name]
    return loss_class(**{**defaults, **kwargs})


def arguments_from_flags(name, flag_values):
    """get_loss keyword arguments of the loss `name` from train.py's flags.

    A flag left at its default does not override a default of the loss name itself: topk_ce
    keeps its 0.25 unless --top_k_percent_pixels is given.

    Args:
      name: one of LOSS_NAMES.
      flag_values: absl's FlagValues (flag_values[flag].value and .present).

    Returns:
      dict of constructor keyword arguments.
    """
    loss_class, defaults = _LOSSES[name]
    return {argument: flag_values[flag].value for argument, flag in _FLAGS[loss_class].items()
            if flag_values[flag].present or argument not in defaults}


__all__ = ["AffinityFieldLoss", "LOSS_NAMES", "LovaszSoftmaxLoss", "RMILoss", "SSIMLoss", "SSLoss", "SigmoidCrossEntropy",
           "SoftmaxCrossEntropy", "SoftmaxSSLoss", "SumsLoss", "arguments_from_flags", "cross_replica_loss",
           "get_loss"]
