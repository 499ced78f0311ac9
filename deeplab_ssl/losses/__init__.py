"""The loss family: SSL and the baselines the paper compares against.

Every loss is a keras.losses.Loss with `sums(y_true, y_pred)`, `loss_from_sums(sums)` and
`terms(sums)`; see base.py and `cross_replica_loss` for the exact loss of a global batch across
replicas. They are written with keras.ops and run on the TensorFlow, JAX and PyTorch backends;
backend.py holds what differs between them.
"""
import functools

from absl import flags

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

# name -> (class, default keyword arguments, what it is); get_loss's kwargs override the
# defaults.
_LOSSES = {
    "ssl": (SSLoss, {}, "the paper's Eq. 17"),
    "bce": (SigmoidCrossEntropy, {}, "sigmoid CE"),
    "softmax_ce": (SoftmaxCrossEntropy, {}, "deeplab's"),
    # deeplab's documented example of hard pixel mining: the top 25% of the pixels.
    "topk_ce": (SoftmaxCrossEntropy, {"top_k_percent_pixels": 0.25},
                "softmax CE on the top_k_percent_pixels hardest pixels"),
    "ssim7": (SSIMLoss, {"contrast_structure_only": False}, "Eq. 7 + BCE"),
    "ssim9": (SSIMLoss, {"contrast_structure_only": True}, "Eq. 9 + BCE"),
    "affinity": (AffinityFieldLoss, {}, "softmax CE + affinity field loss"),
    "lovasz": (LovaszSoftmaxLoss, {}, "Lovasz-softmax, the IoU's convex surrogate"),
    "rmi": (RMILoss, {}, "region mutual information + BCE"),
    # Beyond the paper (ssl_softmax.py): the SSL's structural weight on softmax CE, then also
    # on deeplab's top 25% of the pixels, then also normalised per class.
    "ssl_softmax": (SoftmaxSSLoss, {}, "beyond the paper: the SSL's weight on softmax CE"),
    "ssl_softmax_topk": (SoftmaxSSLoss, {"top_k_percent_pixels": 0.25},
                         "beyond the paper: and on the top 25% of the pixels"),
    "ssl_softmax_topk_balanced": (
        SoftmaxSSLoss, {"top_k_percent_pixels": 0.25, "class_balanced": True},
        "beyond the paper: and normalised per class"),
}
LOSS_NAMES = tuple(_LOSSES)

# Every flag of the losses, defined once (train.py defines them with `define_flags`):
# name -> (absl's DEFINE function, default, help).
LOSS_FLAGS = {
    "ssl_window_size": (flags.DEFINE_integer, 3,
                        "Region size k of the SSL and the SSIM losses (odd; paper: 1 to 11)."),
    "ssl_sigma": (flags.DEFINE_float, 1.5,
                  "Std of the Gaussian window of the SSL and SSIM losses."),
    "ssl_beta": (flags.DEFINE_float, 0.1,
                 "Hard-example threshold factor beta of the SSL (Eq. 11)."),
    "ssl_ce_weight": (flags.DEFINE_float, 0.5,
                      "Weight lambda of the CE term of the SSL, its softmax variants, and the "
                      "SSIM and RMI losses (Eq. 17)."),
    "ssl_ohem": (flags.DEFINE_boolean, True, "SSL: drop the easy examples (Table 3's OHEM)."),
    "ssl_reweight": (flags.DEFINE_boolean, True, "SSL: weight hard examples by e (Table 3)."),
    "ssl_warmup_steps": (flags.DEFINE_integer, 0,
                         "SSL, beyond the paper: the BCE term alone for this many steps, then "
                         "Eq. 17 (docs/results.md says when it helps); 0: the paper's loss."),
    "ssl_class_balanced": (flags.DEFINE_boolean, False,
                           "ssl_softmax*: the structural term normalised per class of the "
                           "labels (ssl_softmax_topk_balanced defaults to True)."),
    "top_k_percent_pixels": (flags.DEFINE_float, 1.0,
                             "softmax_ce / topk_ce / ssl_softmax*: fraction of the hardest "
                             "pixels in the CE term (topk_ce and ssl_softmax_topk* default to "
                             "0.25 when this flag is not given)."),
    "hard_example_mining_step": (flags.DEFINE_integer, 0,
                                 "softmax_ce / topk_ce: step at which mining reaches "
                                 "top_k_percent_pixels."),
    "class_weights": (flags.DEFINE_list, None,
                      "softmax_ce / topk_ce: the weight of each class's pixels, C numbers "
                      "(deeplab's per-class loss_weight), e.g. 1,1,5."),
    "class_weighting": (functools.partial(flags.DEFINE_enum,
                                          enum_values=["none", "median_frequency"]), "none",
                        "softmax_ce / topk_ce: median_frequency weighs each class by the median "
                        "class frequency over its own, from the --train_split's labels "
                        "(SegNet's CamVid weights); the weights are logged."),
    "affinity_kld_margin": (flags.DEFINE_float, 3.0,
                            "Affinity field loss: separating-force margin."),
    "rmi_radius": (flags.DEFINE_integer, 3, "rmi: the side R of the regions (the authors' 3)."),
    "rmi_pool_size": (flags.DEFINE_integer, 4,
                      "rmi: average pooling (kernel and stride) before the regions (the "
                      "authors' 4)."),
    "lovasz_per_image": (flags.DEFINE_boolean, False,
                         "lovasz: the mean of each image's Lovasz-softmax loss, not the batch's."),
}
# The flag of each constructor argument, per loss class. class_weights and class_weighting
# need the dataset: train.py resolves them.
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


def define_flags(flag_values, default_loss="ssl"):
    """Defines --loss (one of LOSS_NAMES) and every flag of LOSS_FLAGS in absl's
    `flag_values`: a new loss touches this file alone."""
    flags.DEFINE_enum("loss", default_loss, LOSS_NAMES, "; ".join(
        f"{name} ({what})" for name, (_, _, what) in _LOSSES.items()) + ".",
        flag_values=flag_values)
    for name, (define, default, help_text) in LOSS_FLAGS.items():
        define(name, default, help=help_text, flag_values=flag_values)


def get_loss(name, **kwargs):
    """Builds the loss called `name` (one of LOSS_NAMES) with `kwargs` for its constructor.

    Example: get_loss("ssl", window_size=7), get_loss("topk_ce", hard_example_mining_step=100000,
    step=optimizer.iterations).

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if name not in _LOSSES:
        raise ValueError(f"Unknown loss {name!r}; known losses: {', '.join(LOSS_NAMES)}")
    loss_class, defaults, _ = _LOSSES[name]
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
    loss_class, defaults, _ = _LOSSES[name]
    return {argument: flag_values[flag].value for argument, flag in _FLAGS[loss_class].items()
            if flag_values[flag].present or argument not in defaults}


__all__ = ["AffinityFieldLoss", "LOSS_FLAGS", "LOSS_NAMES", "LovaszSoftmaxLoss", "RMILoss",
           "SSIMLoss", "SSLoss", "SigmoidCrossEntropy", "SoftmaxCrossEntropy", "SoftmaxSSLoss",
           "SumsLoss", "arguments_from_flags", "cross_replica_loss", "define_flags", "get_loss"]
