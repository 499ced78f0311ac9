"""Gaussian window and masked local statistics (paper Sec. 3.3): the one copy, for SSL and SSIM.

Local statistics are weighted means over a k x k window centred on each pixel, computed over
VALID pixels only: mean(x) = conv(w, m * x) / conv(w, m), m the valid mask. The convolution is
depthwise with zero padding ('SAME'), so pixels outside the image count as invalid too.
"""
import numpy as np
from keras import ops

from deeplab_ssl.losses import backend

# Measured on 2 CPU cores (benchmarks/loss_bench.py --conv): a k x k depthwise convolution is
# faster than a k x 1 then 1 x k pair for k <= 5, slower from 7 on (2.7x at 11).
_LARGEST_FULL_WINDOW = 5


def _check_window(window_size, sigma):
    if int(window_size) != window_size or window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be an odd positive integer, got {window_size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")


def gaussian_1d(window_size, sigma):
    """The 1-D Gaussian whose outer product is gaussian_window: numpy float64 [k], sum 1."""
    _check_window(window_size, sigma)
    offsets = np.arange(window_size, dtype=np.float64) - (window_size - 1) / 2.0
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def gaussian_window(window_size, sigma):
    """The circular-symmetric Gaussian window, normalized to sum 1.

    Args:
      window_size: odd int k, the side of the window (the paper's region size).
      sigma: float > 0, standard deviation in pixels (1.5 in the paper; a huge sigma gives a
        uniform window).

    Returns:
      numpy float32 [k, k].
    """
    weights = gaussian_1d(window_size, sigma)
    return np.outer(weights, weights).astype(np.float32)


def window_taps(window_size, sigma):
    """The k x k Gaussian window as taps (row, column, weight): the window sum at pixel (i, j)
    is sum of weight * x[i + row - k // 2, j + column - k // 2], rows first.

    Returns:
      list of k^2 (int, int, Python float), the weights those of gaussian_window.
    """
    window = gaussian_window(window_size, sigma)
    return [(row, column, float(window[row, column]))
            for row in range(window_size) for column in range(window_size)]


def local_sums(x, window_size, sigma):
    """Gaussian-weighted sums over the window around each pixel, zero outside the image.

    Where the losses are known to run in XLA (backend.compiles_with_xla: JAX, TensorFlow with
    XLA on globally), the sums are shifted, weighted adds of x (`shifted_sums`), which XLA
    fuses with the element-wise work around them; XLA's depthwise convolution is ~10x slower
    than TF's on CPU. Elsewhere (TensorFlow's graphs, PyTorch), a depthwise convolution is
    faster than such adds (one pass over memory per add). Both are exact to float32 rounding.

    Args:
      x: float32 [B, H, W, n].
      window_size, sigma: see gaussian_window.

    Returns:
      float32 [B, H, W, n]: sum_i w_i x_i over the window centred on each pixel.
    """
    if backend.compiles_with_xla():
        return shifted_sums(x, window_size, sigma)
    channels = x.shape[-1]
    if channels is None:
        raise ValueError(f"local_sums needs a static channel count; got shape {x.shape}")

    def depthwise(x, window):  # window: float32 [kh, kw], the same for every channel.
        kernel = np.tile(window[:, :, None, None], [1, 1, channels, 1])
        return ops.depthwise_conv(x, kernel, strides=1, padding="same")
    if window_size <= _LARGEST_FULL_WINDOW:
        return depthwise(x, gaussian_window(window_size, sigma))
    # The 2-D Gaussian is separable: a k x 1 then a 1 x k pass.
    weights = gaussian_1d(window_size, sigma).astype(np.float32)
    return depthwise(depthwise(x, weights[:, None]), weights[None, :])


def shifted_sums(x, window_size, sigma):
    """local_sums as shifted adds (keras.ops), for XLA: a k x 1 then a 1 x k pass of the
    separable window, zero outside x. float32 [B, H, W, n] -> the same."""
    weights = gaussian_1d(window_size, sigma).astype(np.float32)
    radius = len(weights) // 2
    height, width = ops.shape(x)[1], ops.shape(x)[2]
    # One pad of the input: padding the first pass's output instead was measured ~20% slower.
    padded = ops.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]])
    columns = sum(float(w) * padded[:, i:i + height] for i, w in enumerate(weights))
    return sum(float(w) * columns[:, :, j:j + width] for j, w in enumerate(weights))


def masked_local_means(tensors, valid, window_size, sigma):
    """Local weighted means of several maps over valid pixels.

    mean(x) = conv(w, m * x) / conv(w, m) at valid pixels, 0 at invalid pixels.

    Args:
      tensors: list of float32 [B, H, W, n_i], each ALREADY ZERO where valid is 0 (pass m * x).
      valid: float32 [B, H, W, 1], the valid mask m (1 valid, 0 invalid).
      window_size, sigma: see gaussian_window.

    Returns:
      list of float32 [B, H, W, n_i], the local means, in the order of `tensors`.
    """
    # One convolution per map: one convolution over the concatenated maps was measured 2-4x
    # slower on CPU (benchmarks/loss_bench.py --conv), the concat and split copies dominating.
    # conv(w, m) >= w_c > 0 at valid pixels; m / conv(w, m) zeroes the invalid ones for free.
    inverse_weight = ops.divide_no_nan(valid, local_sums(valid, window_size, sigma))
    return [local_sums(t, window_size, sigma) * inverse_weight for t in tensors]


def center_weight(window_size, sigma):
    """w_c, the weight of the centre pixel in the normalized window (a Python float)."""
    return float(gaussian_window(window_size, sigma)[window_size // 2, window_size // 2])
