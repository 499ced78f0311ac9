"""Generates the demo set: small street-like scenes, written as records in deeplab's schema.

Deterministic from `--seed` (example i of a split comes from its own random stream, so any
example can be regenerated alone) and fast (vectorized numpy; about a second per hundred scenes
at the default 128x160). Each scene has, in depth order: a sky with clouds, a row of buildings
with windows (gaps show the sky), a road in perspective with lane marks, tiled sidewalks, and
objects sorted far to near so that near ones occlude far ones: fences, trees, poles carrying
signs, people and cars. Classes (Cityscapes' order and names, a subset):

    0 road  1 sidewalk  2 building  3 fence  4 pole  5 sign  6 tree  7 sky  8 person  9 car

Thin and small classes (poles 1-3 px wide, signs, people) sit next to large ones. Each class has
its own colour range and texture, so the image carries what is needed to segment it, but the
ranges overlap (grey poles on grey facades, red signs and red cars) and every image gets a
random colour cast, a smooth illumination field and pixel noise, stored as JPEG. As in VOC, a
1-pixel band around people and cars is labelled 255 (ignored).

Usage:
    python -m deeplab_ssl.datasets.build_demo_data --output_dir=demo_out/data [--seed=0]
"""
import numpy as np
from absl import flags

from deeplab_ssl import errors
from deeplab_ssl.datasets import build_data, descriptors

# The descriptor's class order, ignore label and split sizes (the defaults below).
DEMO = descriptors.get_descriptor("demo")
ROAD, SIDEWALK, BUILDING, FENCE, POLE, SIGN, TREE, SKY, PERSON, CAR = range(DEMO.num_classes)
_SPLIT_STREAMS = {"train": 0, "val": 1}

_FACADES = np.array([[150, 140, 125], [160, 90, 70], [120, 120, 125], [185, 170, 140],
                     [110, 95, 85]], np.float32)
_CAR_PAINTS = np.array([[180, 30, 30], [30, 60, 150], [200, 200, 205], [40, 40, 45],
                        [120, 125, 130], [200, 170, 40], [30, 110, 60]], np.float32)
_SIGN_PAINTS = np.array([[200, 30, 35], [30, 70, 180], [230, 200, 30], [235, 235, 235]],
                        np.float32)
_CLOTHES = np.array([[40, 40, 60], [150, 30, 40], [60, 90, 150], [200, 190, 170],
                     [60, 110, 60], [30, 30, 30]], np.float32)


def _smooth_noise(rng, height, width, cell):
    """float32 [H, W] noise of unit scale varying over about `cell` pixels (bilinear grid)."""
    grid = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    y, x = np.arange(height) / cell, np.arange(width) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None].astype(np.float32), (x - x0)[None, :].astype(np.float32)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


class _Canvas:
    """An image and its label, painted back to front."""

    def __init__(self, rng, height, width):
        self.rng = rng
        self.height, self.width = height, width
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.image = np.zeros((height, width, 3), np.float32)
        self.label = np.zeros((height, width), np.uint8)
        self.objects = np.zeros((height, width), bool)  # people and cars, for the ignore band

    def paint(self, mask, label, color, grain=0.0):
        """Sets `label` and `color` (RGB [3] or [H, W, 3]) on mask [H, W], with per-pixel noise
        of std `grain` (a texture)."""
        index = np.flatnonzero(mask)  # One scan of the mask, then cheap flat indexing.
        color = np.asarray(color, np.float32)
        color = color.reshape(-1, 3)[index] if color.ndim == 3 else color
        if grain:
            color = color + self.rng.normal(0, grain, (index.size, 1))
        self.image.reshape(-1, 3)[index] = color
        self.label.ravel()[index] = label
        self.objects.ravel()[index] = label in (PERSON, CAR)

    def jitter(self, color, amount=15.0):
        return np.asarray(color, np.float32) + self.rng.uniform(-amount, amount, 3)


def _sky(c):
    t = (c.yy / c.height)[..., None]
    color = c.jitter([60, 120, 200], 20) * (1 - t) + c.jitter([170, 200, 230], 15) * t
    clouds = np.clip(_smooth_noise(c.rng, c.height, c.width, max(4, c.width // 10)) - 0.4,
                     0, 1)[..., None]
    c.paint(np.ones_like(c.label, bool), SKY, color * (1 - clouds) + 235 * clouds, grain=2)


def _buildings(c, horizon):
    x, unit = 0.0, c.width / 160
    while x < c.width:
        block_width = c.rng.uniform(12, 45) * unit
        if c.rng.random() > 0.15:  # Gaps between blocks show the sky.
            roof = c.rng.uniform(0.05, 0.75) * horizon
            mask = (c.xx >= x) & (c.xx < x + block_width) & (c.yy >= roof) & (c.yy < horizon + 2)
            facade = c.jitter(_FACADES[c.rng.integers(len(_FACADES))])
            c.paint(mask, BUILDING, facade, grain=6)
            period_x, period_y = c.rng.uniform(5, 9, 2) * unit
            windows = (mask & ((c.xx - x) % period_x > period_x * 0.45)
                       & ((c.yy - roof) % period_y > period_y * 0.5)
                       & (c.xx > x + 2) & (c.xx < x + block_width - 2) & (c.yy > roof + 3))
            c.paint(windows, BUILDING, facade * 0.45 + c.jitter([30, 40, 60], 10), grain=6)
        x += block_width


def _ground(c, horizon, vanish_x, spread):
    below = c.yy > horizon
    tiles = ((c.xx + 0.5 * c.yy) % 7 < 1) | (c.yy % 5 < 1)
    sidewalk = c.jitter([165, 155, 140], 20)
    c.paint(below, SIDEWALK, sidewalk - 35 * tiles[..., None], grain=5)
    depth = np.maximum(c.yy - horizon, 0)
    road = below & (np.abs(c.xx - vanish_x) < depth * spread)
    c.paint(road, ROAD, c.jitter([75, 75, 80], 12), grain=8)
    dashes = road & (np.abs(c.xx - vanish_x) < 0.5 + depth * 0.025) & (
        (np.log1p(depth) * 6) % 2 < 1)
    c.paint(dashes, ROAD, c.jitter([215, 215, 200], 10), grain=5)


def _ellipse(c, cy, cx, ry, rx, wobble=0.0):
    r = ((c.yy - cy) / max(ry, 0.5)) ** 2 + ((c.xx - cx) / max(rx, 0.5)) ** 2
    if wobble:
        r = r + wobble * _smooth_noise(c.rng, c.height, c.width, 3)
    return r < 1


def _box(c, top, bottom, left, right):
    return (c.yy >= top) & (c.yy < bottom) & (c.xx >= left) & (c.xx < right)


def _fence(c, y, scale):
    height = max(4.0, 14 * scale)
    left = c.rng.uniform(-0.2, 0.7) * c.width
    right = left + c.rng.uniform(0.2, 0.6) * c.width
    area = _box(c, y - height, y, left, right)
    slats = area & (((c.xx - left) % 4 < 2) | (np.abs(c.yy - (y - 0.7 * height)) < 1))
    c.paint(slats, FENCE, c.jitter([130, 115, 90], 25), grain=6)


def _tree(c, y, x, scale):
    trunk_height, radius = 28 * scale, 17 * scale
    trunk_width = max(1.0, 3 * scale)
    c.paint(_box(c, y - trunk_height, y, x - trunk_width / 2, x + trunk_width / 2), TREE,
            c.jitter([90, 65, 45], 10), grain=6)
    crown = _ellipse(c, y - trunk_height - 0.6 * radius, x, radius, 0.8 * radius, wobble=0.4)
    leaves = c.jitter([60, 120, 50], 18) + 25 * _smooth_noise(c.rng, c.height, c.width, 2)[
        ..., None]
    c.paint(crown, TREE, leaves, grain=10)


def _pole(c, y, x, scale):
    height = c.rng.uniform(50, 90) * scale
    width = max(1.0, round(2 * scale + c.rng.uniform(-0.5, 0.5)))
    c.paint(_box(c, y - height, y, x, x + width), POLE, c.jitter([125, 125, 120], 20), grain=4)
    if c.rng.random() < 0.8:
        size = max(3.0, c.rng.uniform(7, 13) * scale)
        cy, cx = y - height + size / 2, x + width / 2
        shape = c.rng.integers(3)
        if shape == 0:
            sign = _ellipse(c, cy, cx, size / 2, size / 2)
        elif shape == 1:
            sign = _box(c, cy - size / 2, cy + size / 2, cx - size / 2, cx + size / 2)
        else:  # A triangle pointing down.
            sign = (c.yy >= cy - size / 2) & (np.abs(c.xx - cx) < (cy + size / 2 - c.yy) / 2)
        c.paint(sign, SIGN, c.jitter(_SIGN_PAINTS[c.rng.integers(len(_SIGN_PAINTS))], 20),
                grain=4)


def _person(c, y, x, scale):
    height = c.rng.uniform(26, 38) * scale
    width = height * 0.3
    clothes = _CLOTHES[c.rng.integers(len(_CLOTHES), size=2)]
    legs = _box(c, y - 0.45 * height, y, x - width / 2, x + width / 2) & (
        np.abs(c.xx - x) > width * 0.12)
    c.paint(legs, PERSON, c.jitter(clothes[0]), grain=6)
    c.paint(_ellipse(c, y - 0.65 * height, x, 0.22 * height, width / 2), PERSON,
            c.jitter(clothes[1]), grain=6)
    c.paint(_ellipse(c, y - 0.92 * height, x, 0.09 * height, 0.09 * height), PERSON,
            c.jitter([215, 170, 140], 30), grain=4)


def _car(c, y, x, scale):
    length, height = c.rng.uniform(42, 60) * scale, c.rng.uniform(15, 20) * scale
    paint = c.jitter(_CAR_PAINTS[c.rng.integers(len(_CAR_PAINTS))], 20)
    body = (np.abs((c.xx - x) / (length / 2)) ** 4
            + np.abs((c.yy - (y - 0.35 * height)) / (0.3 * height)) ** 4) < 1
    cabin = _ellipse(c, y - 0.65 * height, x, 0.3 * height, 0.3 * length)
    c.paint(body | cabin, CAR, paint, grain=5)
    glass = _ellipse(c, y - 0.68 * height, x, 0.2 * height, 0.25 * length)
    c.paint(glass, CAR, c.jitter([50, 60, 75], 10), grain=5)
    for side in (-1, 1):
        c.paint(_ellipse(c, y - 0.1 * height, x + side * 0.3 * length, 0.12 * height,
                         0.12 * height), CAR, [20, 20, 20], grain=4)


def make_scene(rng, height=128, width=160):
    """One street scene.

    Args:
        rng: np.random.Generator, the only source of randomness.
        height, width: int, image size.

    Returns:
        (image uint8 [height, width, 3], label uint8 [height, width] of classes 0..9 and 255).
    """
    c = _Canvas(rng, height, width)
    horizon = rng.uniform(0.38, 0.55) * height
    vanish_x = rng.uniform(0.3, 0.7) * width
    spread = rng.uniform(0.8, 1.6)  # Road half-width per pixel below the horizon.
    _sky(c)
    _buildings(c, horizon)
    _ground(c, horizon, vanish_x, spread)

    def scale(y):  # Apparent size at base row y: 0 at the horizon, 1 at the bottom (128 rows).
        return (y - horizon) / (height - horizon) * height / 128

    def row(top):  # A base row below `top`, more often near (large) than far.
        return top + (height + 8 - top) * np.sqrt(rng.random())

    def beside_road(y, margin):
        side = rng.choice([-1, 1])
        return vanish_x + side * ((y - horizon) * spread + margin * scale(y))

    objects = []  # (base row, draw function, args): painted far (small row) to near.
    for _ in range(rng.integers(0, 3)):
        y = horizon + rng.uniform(1, 8)
        objects.append((y, _fence, (y, scale(y) + 0.3)))
    for _ in range(rng.integers(0, 6)):
        y = row(horizon + 4)
        objects.append((y, _tree, (y, beside_road(y, rng.uniform(8, 30)), scale(y))))
    for _ in range(rng.integers(2, 9)):
        y = row(horizon + 6)
        objects.append((y, _pole, (y, beside_road(y, rng.uniform(2, 6)), scale(y))))
    for _ in range(rng.integers(1, 8)):
        y = row(horizon + 8)
        x = (beside_road(y, rng.uniform(4, 40)) if rng.random() < 0.8
             else vanish_x + rng.uniform(-1, 1) * (y - horizon) * spread)
        objects.append((y, _person, (y, x, scale(y))))
    for _ in range(rng.integers(1, 6)):
        y = row(horizon + 8)
        x = vanish_x + rng.uniform(-0.8, 0.8) * (y - horizon) * spread
        objects.append((y, _car, (y, x, scale(y))))
    for _, draw, args in sorted(objects, key=lambda o: o[0]):
        draw(c, *args)

    # Ignore a 1-pixel band around people and cars (outside them), as VOC's boundaries.
    grown = c.objects.copy()
    grown[1:] |= c.objects[:-1]
    grown[:-1] |= c.objects[1:]
    grown[:, 1:] |= c.objects[:, :-1]
    grown[:, :-1] |= c.objects[:, 1:]
    c.label[grown & ~c.objects] = DEMO.ignore_label

    cast = rng.uniform(0.8, 1.15, 3) * rng.uniform(0.75, 1.2)
    light = 1 + 0.15 * _smooth_noise(rng, height, width, max(8, width // 5))[..., None]
    image = c.image * cast * light + rng.normal(0, rng.uniform(2, 8), c.image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8), c.label


def encode_scene(seed, split, index, height, width):
    """The serialized record of example `index` of `split`, named `SPLIT_INDEX`."""
    rng = np.random.default_rng([seed, _SPLIT_STREAMS[split], index])
    image, label = make_scene(rng, height, width)
    return build_data.encode_arrays(f"{split}_{index:05d}", image, label, DEMO.num_classes,
                                    DEMO.ignore_label, image_format="jpeg")


def build_demo(output_dir, seed=0, num_train=DEMO.split_size("train"),
               num_val=DEMO.split_size("val"), height=128, width=160, num_shards=2,
               progress=True):
    """Generates and writes the demo set's train and val splits.

    Args:
        output_dir: str, where the shards go.
        seed: int, the seed of the whole set.
        num_train, num_val: int, examples per split.
        height, width: int, image size.
        num_shards: int, shards per split.
        progress: bool, show progress bars.

    Returns:
        dict split -> list of shard paths.
    """
    builder_args = dict(builder="build_demo_data", seed=seed, height=height, width=width)
    return {split: build_data.write_split(
                range(count), lambda i, split=split: encode_scene(seed, split, i, height, width),
                output_dir, split, num_shards, DEMO, builder_args, progress)
            for split, count in (("train", num_train), ("val", num_val))}


def main(argv):
    del argv
    f = flags.FLAGS
    build_demo(f.output_dir, seed=f.seed, num_train=f.num_train, num_val=f.num_val,
               height=f.height, width=f.width, num_shards=f.num_shards)


if __name__ == "__main__":
    flags.DEFINE_string("output_dir", "./demo_data", "Where the shards are written.")
    flags.DEFINE_integer("seed", 0, "Seed of the whole set.")
    flags.DEFINE_integer("num_train", DEMO.split_size("train"), "Training examples.")
    flags.DEFINE_integer("num_val", DEMO.split_size("val"), "Validation examples.")
    flags.DEFINE_integer("height", 128, "Image height.")
    flags.DEFINE_integer("width", 160, "Image width.")
    flags.DEFINE_integer("num_shards", 2, "Shards per split.")
    errors.run(main)
