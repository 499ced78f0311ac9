"""deeplab's preprocessing: alignment of image and label, padding values, scale steps, eval."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_ssl.datasets import preprocess

MEAN = (120.0, 110.0, 100.0)
IGNORE = 255
# Colors at corners of the RGB cube: no blend of two or more of them equals a third, so a pixel
# of exactly one of these colors after bilinear resizing comes from pixels of that color only.
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]],
                   np.float32)


def block_image_and_label(height, width, block=8, seed=0):
    """An image of colored blocks and its label drawn from it: label = palette index of color."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, len(PALETTE), (height // block + 1, width // block + 1))
    label = np.kron(classes, np.ones((block, block), np.int64))[:height, :width]
    image = PALETTE[label]
    return tf.constant(image, tf.uint8), tf.constant(label[..., None], tf.uint8)


def assert_aligned(image, label):
    """Every pixel of an exact palette color has that color's label; mean pixel <-> ignore."""
    image, label = image.numpy(), label.numpy()[..., 0]
    distance = np.abs(image[:, :, None, :] - PALETTE[None, None]).max(-1)
    exact = distance.min(-1) < 0.5
    is_mean = np.all(image == np.array(MEAN, np.float32), axis=-1)
    assert exact[~is_mean].mean() > 0.5, "too few pixels of exact palette colors to check"
    np.testing.assert_array_equal(label[exact], distance.argmin(-1)[exact])
    np.testing.assert_array_equal(is_mean, label == IGNORE)


@pytest.mark.parametrize("seed", range(6))
def test_training_augmentation_keeps_image_and_label_aligned(seed):
    image, label = block_image_and_label(37, 53, seed=seed)
    out_image, out_label = preprocess.preprocess_image_and_label(
        image, label, 48, 64, min_scale_factor=0.5, max_scale_factor=2.0,
        scale_factor_step_size=0.25, mean_pixel=MEAN, ignore_label=IGNORE, is_training=True,
        seed=tf.constant([seed, 7]))
    assert out_image.dtype == tf.float32 and out_image.shape == (48, 64, 3)
    assert out_label.dtype == tf.int32 and out_label.shape == (48, 64, 1)
    assert_aligned(out_image, out_label)


def test_alignment_check_catches_a_flipped_label():
    image, label = block_image_and_label(32, 32)
    with pytest.raises(AssertionError):
        assert_aligned(tf.cast(image, tf.float32), label[:, ::-1])


def test_flip_and_crop_move_image_and_label_together():
    image, label = block_image_and_label(40, 40, block=5, seed=3)
    flips = set()
    for seed in range(8):
        out_image, out_label = preprocess.preprocess_image_and_label(
            image, label, 24, 24, mean_pixel=MEAN, ignore_label=IGNORE,
            seed=tf.constant([seed, 0]))
        assert_aligned(out_image, out_label)
        # Without scaling the crop is an exact window of the (maybe flipped) image.
        source = image.numpy().astype(np.float32)
        windows = [source[i:i + 24, j:j + 24] for i in range(17) for j in range(17)]
        flipped = [w[:, ::-1] for w in windows]
        flips.add(any(np.array_equal(out_image.numpy(), w) for w in flipped))
        assert any(np.array_equal(out_image.numpy(), w) for w in windows + flipped)
    assert flips == {True, False}


def test_padding_uses_mean_pixel_and_ignore_label():
    image = tf.fill([5, 7, 3], tf.constant(9, tf.uint8))
    label = tf.fill([5, 7, 1], tf.constant(3, tf.uint8))
    out_image, out_label = preprocess.preprocess_image_and_label(
        image, label, 9, 11, mean_pixel=MEAN, ignore_label=IGNORE, is_training=False)
    out_image, out_label = out_image.numpy(), out_label.numpy()
    assert out_image.shape == (9, 11, 3) and out_label.shape == (9, 11, 1)
    np.testing.assert_array_equal(out_image[:5, :7], 9.0)
    np.testing.assert_array_equal(out_label[:5, :7], 3)
    for region in (np.s_[5:, :], np.s_[:, 7:]):
        np.testing.assert_array_equal(out_image[region], np.broadcast_to(
            np.array(MEAN, np.float32), out_image[region].shape))
        np.testing.assert_array_equal(out_label[region], IGNORE)


def test_training_pads_small_images_before_cropping():
    image, label = block_image_and_label(10, 12)
    out_image, out_label = preprocess.preprocess_image_and_label(
        image, label, 20, 20, mean_pixel=MEAN, ignore_label=IGNORE, seed=tf.constant([1, 2]))
    assert_aligned(out_image, out_label)
    assert np.sum(out_label.numpy() != IGNORE) == 10 * 12


def test_scale_factors_follow_deeplab_formula():
    assert preprocess.scale_factors(0.5, 2.0, 0.25) == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert preprocess.scale_factors(0.5, 1.5, 0.5) == [0.5, 1.0, 1.5]
    # int((0.35 - 0.05) / 0.1 + 1) == 3 in floating point: deeplab's linspace of 3 values.
    assert preprocess.scale_factors(0.05, 0.35, 0.1) == pytest.approx([0.05, 0.2, 0.35])
    with pytest.raises(ValueError, match="min_scale_factor"):
        preprocess.scale_factors(2.0, 0.5, 0.25)


def test_random_scale_draws_every_step_and_nothing_else():
    draws = {round(float(preprocess.get_random_scale(0.5, 2.0, 0.25, tf.constant([s, 0]))), 6)
             for s in range(200)}
    assert draws == {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}
    uniform = [float(preprocess.get_random_scale(0.5, 2.0, 0, tf.constant([s, 1])))
               for s in range(50)]
    assert min(uniform) >= 0.5 and max(uniform) < 2.0 and len(set(uniform)) == 50
    assert float(preprocess.get_random_scale(1.5, 1.5, 0.25, tf.constant([0, 0]))) == 1.5


def test_scaled_size_is_truncated_like_deeplab():
    image = tf.zeros([37, 53, 3])
    label = tf.zeros([37, 53, 1], tf.int32)
    for scale in (0.5, 0.75, 1.25, 2.0):
        out_image, out_label = preprocess.scale_image_and_label(image, label, tf.constant(scale))
        expected = (int(37 * scale), int(53 * scale))
        assert tuple(out_image.shape[:2]) == expected == tuple(out_label.shape[:2])


def test_evaluation_keeps_the_whole_image():
    image, label = block_image_and_label(30, 50)
    for crop in ((None, None), (20, 20), (40, 40)):
        out_image, out_label = preprocess.preprocess_image_and_label(
            image, label, *crop, min_scale_factor=0.5, max_scale_factor=2.0,
            scale_factor_step_size=0.25, mean_pixel=MEAN, ignore_label=IGNORE,
            is_training=False)
        np.testing.assert_array_equal(out_image.numpy()[:30, :50], image.numpy())
        np.testing.assert_array_equal(out_label.numpy()[:30, :50], label.numpy())
        expected = (max(30, crop[0] or 0), max(50, crop[1] or 0))
        assert tuple(out_image.shape[:2]) == expected == tuple(out_label.shape[:2])


def test_same_seed_same_augmentation():
    image, label = block_image_and_label(37, 53)
    kwargs = dict(crop_height=32, crop_width=32, min_scale_factor=0.5, max_scale_factor=2.0,
                  scale_factor_step_size=0.25)
    first = preprocess.preprocess_image_and_label(image, label, seed=tf.constant([4, 2]),
                                                  **kwargs)
    second = preprocess.preprocess_image_and_label(image, label, seed=tf.constant([4, 2]),
                                                   **kwargs)
    other = preprocess.preprocess_image_and_label(image, label, seed=tf.constant([5, 2]),
                                                  **kwargs)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_training_needs_a_crop_size():
    image, label = block_image_and_label(8, 8)
    with pytest.raises(ValueError, match="crop_height"):
        preprocess.preprocess_image_and_label(image, label, is_training=True)


@pytest.mark.parametrize("size, min_size, max_size, factor, expected", [
    ((375, 500), 513, None, None, (513, 684)),  # ceil(500 * 513 / 375) = 684.
    # 684 > 600: the larger side becomes 600; 375 * float32(600 / 500) rounds up to 451.
    ((375, 500), 513, 600, None, (451, 600)),
    # deeplab's ADE20K flags: max 513 lowered to 497 (16k + 1), sides rounded up to 16k + 1.
    ((375, 500), 513, 513, 16, (385, 497)),
    ((200, 120), 513, 513, 16, (497, 305)),
    ((100, 100), 50, None, 8, (57, 57)),
])
def test_resize_to_range_follows_deeplab(size, min_size, max_size, factor, expected):
    image, label = block_image_and_label(*size)
    out_image, out_label = preprocess.resize_to_range(
        tf.cast(image, tf.float32), tf.cast(label, tf.int32), min_size, max_size, factor)
    assert tuple(out_image.shape[:2]) == expected == tuple(out_label.shape[:2])


def test_evaluation_resizes_to_range_with_label_aligned():
    image, label = block_image_and_label(30, 50)
    out_image, out_label = preprocess.preprocess_image_and_label(
        image, label, min_resize_value=45, max_resize_value=100, mean_pixel=MEAN,
        ignore_label=IGNORE, is_training=False)
    assert tuple(out_image.shape[:2]) == (45, 75)
    assert_aligned(out_image, out_label)
