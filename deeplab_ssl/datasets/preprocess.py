"""deeplab's training and evaluation preprocessing as pure TensorFlow functions.

The ops and their order are deeplab's `input_preprocess.preprocess_image_and_label`: random scale
(bilinear image, nearest label, both with `align_corners=True`), pad to the crop size at the bottom
and right (mean pixel for the image, ignore label for the label), random crop, random left-right
flip. Images stay raw float32 pixels in [0, 255]: the model normalizes them inside.

Random ops are stateless: each takes a `seed` int tensor of shape [2], so the same seed gives the
same augmentation on any machine and in any order of a parallel map.
"""
import tensorflow as tf

# deeplab's preprocess_utils.flip_dim default.
_PROB_OF_FLIP = 0.5


def _split_seed(seed, num):
    """`num` independent seeds [2] drawn from `seed`; a random seed if `seed` is None."""
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _check_scale_range(min_scale_factor, max_scale_factor):
    if min_scale_factor < 0 or min_scale_factor > max_scale_factor:
        raise ValueError(
            f"min_scale_factor={min_scale_factor} must be in [0, max_scale_factor="
            f"{max_scale_factor}]")


def scale_factors(min_scale_factor, max_scale_factor, scale_factor_step_size):
    """The discrete scale factors deeplab draws from, as a Python list.

    deeplab's formula: `num_steps = int((max - min) / step + 1)` values evenly spaced from min to
    max inclusive (e.g. 0.5, 0.75, ..., 2.0 for 0.5, 2.0, 0.25). Like deeplab, the division is not
    rounded, so a step that does not divide the range exactly in floating point gives one value
    fewer.

    Raises:
        ValueError: if min < 0, min > max, or the step is not positive.
    """
    _check_scale_range(min_scale_factor, max_scale_factor)
    if scale_factor_step_size <= 0:
        raise ValueError(f"scale_factor_step_size={scale_factor_step_size} must be > 0")
    num_steps = int((max_scale_factor - min_scale_factor) / scale_factor_step_size + 1)
    if num_steps == 1:
        return [float(min_scale_factor)]
    step = (max_scale_factor - min_scale_factor) / (num_steps - 1)
    return [float(min_scale_factor + i * step) for i in range(num_steps)]


def get_random_scale(min_scale_factor, max_scale_factor, scale_factor_step_size, seed):
    """A random scale factor, deeplab's `preprocess_utils.get_random_scale`.

    Args:
        min_scale_factor, max_scale_factor: floats, the range of scales.
        scale_factor_step_size: float; 0 draws uniformly from [min, max), otherwise one of
            `scale_factors(min, max, step)` with equal probability.
        seed: int32/int64 tensor [2] for the stateless draw.

    Returns:
        float32 scalar.
    """
    _check_scale_range(min_scale_factor, max_scale_factor)
    if min_scale_factor == max_scale_factor:
        return tf.constant(min_scale_factor, tf.float32)
    if scale_factor_step_size == 0:
        return tf.random.stateless_uniform([], seed, min_scale_factor, max_scale_factor)
    factors = tf.constant(
        scale_factors(min_scale_factor, max_scale_factor, scale_factor_step_size), tf.float32)
    index = tf.random.stateless_uniform([], seed, 0, factors.shape[0], dtype=tf.int32)
    return factors[index]


def _resize_image_and_label(image, label, size):
    """Bilinear image and nearest label resizes to `size` with `align_corners=True`, deeplab's
    way, so that image and label sample the same grid. image float32 [H, W, 3], label int32
    [H, W, 1] or None, size int32 [2]."""
    image = tf.raw_ops.ResizeBilinear(images=image[None], size=size, align_corners=True)[0]
    if label is not None:
        label = tf.raw_ops.ResizeNearestNeighbor(
            images=label[None], size=size, align_corners=True)[0]
    return image, label


def scale_image_and_label(image, label, scale):
    """Resizes image (bilinear) and label (nearest) by `scale`, deeplab's way.

    The new size is `int(size * scale)` (truncated), as deeplab's
    `randomly_scale_image_and_label`.

    Args:
        image: float32 [H, W, 3].
        label: int32 [H, W, 1] or None.
        scale: float32 scalar.

    Returns:
        (image float32 [h, w, 3], label int32 [h, w, 1] or None).
    """
    size = tf.cast(tf.cast(tf.shape(image)[:2], tf.float32) * scale, tf.int32)
    return _resize_image_and_label(image, label, size)


def resize_to_range(image, label, min_size, max_size=None, factor=None):
    """deeplab's `preprocess_utils.resize_to_range` (its --min_resize_value, --max_resize_value,
    --resize_factor), e.g. for ADE20K.

    The smaller side becomes `min_size` (sizes rounded up) unless the larger side would then
    exceed `max_size`, in which case the larger side becomes `max_size`; with `factor`, both
    sides are then rounded up to a multiple of factor plus one, `max_size` having first been
    lowered to such a value (deeplab's arithmetic, kept as is).

    Args:
        image: float32 [H, W, 3].
        label: int32 [H, W, 1] or None.
        min_size: number, the target size of the smaller side.
        max_size: number or None, the largest allowed size of the larger side.
        factor: int or None.

    Returns:
        (image float32 [h, w, 3], label int32 [h, w, 1] or None).
    """
    if max_size is not None and factor is not None:
        max_size = max_size + (factor - (max_size - 1) % factor) % factor - factor
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    new_size = tf.cast(tf.math.ceil(size * (min_size / tf.reduce_min(size))), tf.int32)
    if max_size is not None:
        small_size = tf.cast(tf.math.ceil(size * (max_size / tf.reduce_max(size))), tf.int32)
        new_size = tf.where(tf.reduce_max(new_size) > max_size, small_size, new_size)
    if factor is not None:
        new_size += (factor - (new_size - 1) % factor) % factor
    return _resize_image_and_label(image, label, new_size)


def pad_to_bounding_box(image, target_height, target_width, pad_value):
    """Pads `image` at the bottom and right to [target_height, target_width] with `pad_value`.

    Args:
        image: [H, W, C] tensor with H <= target_height and W <= target_width.
        target_height, target_width: int32 scalars.
        pad_value: a scalar, or one value per channel (e.g. the mean pixel). The padding is
            filled with it, so pixels stay exact (deeplab subtracts it and adds it back).

    Returns:
        [target_height, target_width, C] tensor of image's dtype.
    """
    pad_value = tf.cast(pad_value, image.dtype)
    shape = tf.shape(image)
    right = tf.broadcast_to(pad_value, [shape[0], target_width - shape[1], shape[2]])
    image = tf.concat([image, right], axis=1)
    bottom = tf.broadcast_to(pad_value, [target_height - shape[0], target_width, shape[2]])
    return tf.concat([image, bottom], axis=0)


def random_crop(image, label, crop_height, crop_width, seed):
    """The same random window of image and label, at most [crop_height, crop_width].

    deeplab pads to at least the crop size, then crops at an offset drawn uniformly from
    [0, padded size - crop size]. Cropping first, at an offset drawn from
    [0, max(size - crop size, 0)], then padding the window gives the same result (the offset is
    0 where the image is smaller than the crop) and pads only the crop.

    Args:
        image: [H, W, 3].
        label: [H, W, 1], same H and W.
        crop_height, crop_width: ints.
        seed: tensor [2].

    Returns:
        (image [min(H, crop_height), min(W, crop_width), 3], label [..., 1]).
    """
    shape = tf.shape(image)
    height, width = tf.minimum(shape[0], crop_height), tf.minimum(shape[1], crop_width)
    offset_seeds = _split_seed(seed, 2)
    offset_height = tf.random.stateless_uniform(
        [], offset_seeds[0], 0, shape[0] - height + 1, dtype=tf.int32)
    offset_width = tf.random.stateless_uniform(
        [], offset_seeds[1], 0, shape[1] - width + 1, dtype=tf.int32)
    image = tf.slice(image, [offset_height, offset_width, 0], [height, width, -1])
    label = tf.slice(label, [offset_height, offset_width, 0], [height, width, -1])
    return image, label


def random_flip_left_right(image, label, seed):
    """Flips image and label together with probability 0.5 (deeplab's `flip_dim`, dim=1)."""
    flip = tf.random.stateless_uniform([], seed) <= _PROB_OF_FLIP
    return tf.cond(flip, lambda: (image[:, ::-1], label[:, ::-1]), lambda: (image, label))


def preprocess_image_and_label(image, label, crop_height=None, crop_width=None,
                               min_resize_value=None, max_resize_value=None, resize_factor=None,
                               min_scale_factor=1.0, max_scale_factor=1.0,
                               scale_factor_step_size=0.0, mean_pixel=(127.5, 127.5, 127.5),
                               ignore_label=255, is_training=True, seed=None):
    """deeplab's `input_preprocess.preprocess_image_and_label`.

    First, with min_resize_value, `resize_to_range` (training and evaluation).
    Training: random scale, pad to the crop size, random crop (done as crop then pad, which gives
    the same result, see `random_crop`), random left-right flip.
    Evaluation: the whole image, padded at the bottom/right to the crop size only where it is
    smaller (no crop, no random op); no padding when the crop size is None.

    Args:
        image: [H, W, 3] uint8 or float tensor of raw pixel values.
        label: [H, W, 1] integer tensor of class indices, same H and W.
        crop_height, crop_width: ints, required for training.
        min_resize_value, max_resize_value, resize_factor: see `resize_to_range`'s min_size,
            max_size and factor; no resizing when min_resize_value is None.
        min_scale_factor, max_scale_factor, scale_factor_step_size: floats, see
            `get_random_scale`.
        mean_pixel: 3 floats, the image padding value (the model variant's mean pixel).
        ignore_label: int, the label padding value.
        is_training: bool.
        seed: int tensor [2] for the random ops; None draws one (not reproducible).

    Returns:
        (image float32 [h, w, 3] in [0, 255], label int32 [h, w, 1]); training gives
        h, w = crop_height, crop_width, evaluation max(H, crop_height), max(W, crop_width)
        with H, W the size after resize_to_range.
    """
    if is_training and (crop_height is None or crop_width is None):
        raise ValueError("training preprocessing needs crop_height and crop_width")
    if max_resize_value is not None and min_resize_value is None:
        raise ValueError("max_resize_value needs min_resize_value, as in deeplab")
    image = tf.cast(image, tf.float32)
    label = tf.cast(label, tf.int32)
    if min_resize_value is not None:
        image, label = resize_to_range(image, label, min_resize_value, max_resize_value,
                                       resize_factor)
    if is_training:
        scale_seed, crop_seed, flip_seed = _split_seed(seed, 3)
        if (min_scale_factor, max_scale_factor) != (1.0, 1.0):
            scale = get_random_scale(
                min_scale_factor, max_scale_factor, scale_factor_step_size, scale_seed)
            image, label = scale_image_and_label(image, label, scale)
        image, label = random_crop(image, label, crop_height, crop_width, crop_seed)
    if crop_height is not None and crop_width is not None:
        shape = tf.shape(image)
        target_height = tf.maximum(shape[0], crop_height)
        target_width = tf.maximum(shape[1], crop_width)
        image = pad_to_bounding_box(image, target_height, target_width, mean_pixel)
        label = pad_to_bounding_box(label, target_height, target_width, ignore_label)
    if is_training:
        image, label = random_flip_left_right(image, label, flip_seed)
        image.set_shape([crop_height, crop_width, 3])
        label.set_shape([crop_height, crop_width, 1])
    return image, label
