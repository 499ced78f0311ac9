"""Dense CRF refinement of predicted probabilities (DeepLab-v2's post-processing) through
pydensecrf2, the `[crf]` extra: eval.py --crf_iterations."""
import numpy as np


def pydensecrf():
    """pydensecrf's (densecrf, utils) modules.

    Raises:
        ImportError saying how to install pydensecrf2 if it is missing.
    """
    try:
        from pydensecrf import densecrf, utils
    except ImportError as error:
        raise ImportError(
            "--crf_iterations needs the pydensecrf2 package: "
            "pip install pydensecrf2 (or pip install 'deeplab-ssl[crf]')") from error
    return densecrf, utils


def dense_crf(image, probabilities, iterations, gaussian_sxy=3, gaussian_compat=3,
              bilateral_sxy=67, bilateral_srgb=3, bilateral_compat=4):
    """Dense CRF refinement (Krähenbühl & Koltun) through pydensecrf2.

    Defaults are DeepLab-v2's PASCAL values (pos_w 3, pos_xy_std 3, bi_w 4, bi_xy_std 67,
    bi_rgb_std 3).

    Args:
        image: [H, W, 3] pixel values in [0, 255].
        probabilities: float [H, W, C] class probabilities.
        iterations: int, mean-field iterations.

    Returns:
        int32 [H, W] labels.

    Raises:
        ImportError saying how to install pydensecrf2 if it is missing.
    """
    densecrf, utils = pydensecrf()
    height, width, num_classes = probabilities.shape
    crf = densecrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(utils.unary_from_softmax(
        np.ascontiguousarray(np.transpose(probabilities, (2, 0, 1)), dtype=np.float32)))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, compat=bilateral_compat,
        rgbim=np.ascontiguousarray(np.clip(image, 0, 255), dtype=np.uint8))
    refined = np.asarray(crf.inference(iterations), dtype=np.float32)
    return refined.reshape(num_classes, height, width).argmax(axis=0).astype(np.int32)


def dense_crf_batch(images, probabilities, iterations):
    """`dense_crf` of each image of a batch: images [B, H, W, 3], probabilities float
    [B, H, W, C] -> int32 [B, H, W] labels."""
    return np.stack([dense_crf(image, probability, iterations)
                     for image, probability in zip(images, probabilities)])
