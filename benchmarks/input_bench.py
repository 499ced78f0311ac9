"""Images per second of the training input pipeline, with the paper's VOC flags.

Reads `--dataset_dir` (deeplab shards of `--split`) or, by default, a few hundred generated
VOC-like records (500x375 JPEG images, PNG labels of 21 classes with 255 borders) in a temporary
folder, and times `input_pipeline.get_dataset` at crop 513, scale 0.5-2.0 step 0.25, random
flip, batch 12. Also times decoding alone (parse + decode, no augmentation) to show where the
time goes. Then times the training step of --model_variant with benchmarks/model_bench.py in
the same run and prints the ratio: the pipeline must be faster than the step consumes.

    python benchmarks/input_bench.py
    python benchmarks/input_bench.py --dataset_dir=tfrecord --split=train_aug
"""
import io
import os
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw
import tensorflow as tf

from deeplab_ssl.datasets import input_pipeline, records

flags.DEFINE_string("dataset", "pascal_voc_seg", "Dataset name (descriptors).")
flags.DEFINE_string("dataset_dir", None, "Shards to read; default: generated VOC-like records.")
flags.DEFINE_string("split", "train", "Split to read.")
flags.DEFINE_integer("num_images", 300, "Generated records (without --dataset_dir).")
flags.DEFINE_integer("batch_size", 12, "Batch size (the paper's VOC setup: 12).")
flags.DEFINE_list("crop_size", ["513", "513"], "Crop height,width.")
flags.DEFINE_float("min_scale_factor", 0.5, "Minimum random scale.")
flags.DEFINE_float("max_scale_factor", 2.0, "Maximum random scale.")
flags.DEFINE_float("scale_factor_step_size", 0.25, "Random scale step.")
flags.DEFINE_integer("num_readers", 4, "Shard files read in parallel.")
flags.DEFINE_integer("warmup_batches", 5, "Batches before timing (fills buffers).")
flags.DEFINE_integer("num_batches", 50, "Timed batches.")
flags.DEFINE_string("model_variant", "mobilenet_v2",
                    "Variant whose training step (benchmarks/model_bench.py forward+backward at "
                    "the crop size) is timed in the same run; empty: skip.")
flags.DEFINE_integer("model_batch", 2, "Batch of the timed training step (CPU time per image "
                     "barely depends on it; 12 takes minutes on 2 cores).")
FLAGS = flags.FLAGS


def _voc_like_example(rng, index, height=375, width=500):
    """A JPEG of smooth shapes with texture and noise, and its PNG label (VOC-like sizes)."""
    yy, xx = np.mgrid[0:height, 0:width]
    background = (np.sin(xx / rng.uniform(20, 60)) * 40 + np.cos(yy / rng.uniform(20, 60)) * 40
                  + rng.uniform(60, 190, 3)[:, None, None])
    image = Image.fromarray(np.clip(background.transpose(1, 2, 0), 0, 255).astype(np.uint8))
    label = Image.new("L", (width, height), 0)
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for _ in range(rng.integers(1, 4)):
        x0, y0 = rng.integers(0, width - 100), rng.integers(0, height - 100)
        box = [x0, y0, x0 + rng.integers(60, 300), y0 + rng.integers(60, 250)]
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw_image.ellipse(box, fill=color)
        draw_label.ellipse(box, fill=int(rng.integers(1, 21)), outline=255, width=5)
    pixels = np.asarray(image).astype(np.float32) + rng.normal(0, 8, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image_data, label_data = _encode(image, "JPEG"), _encode(label, "PNG")
    return records.encode_example(image_data, f"{index:06d}", height, width, label_data)


def _encode(image, image_format):
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def write_voc_like(directory, split, num_images, num_shards=4):
    """Writes `num_images` VOC-like records as deeplab shards of `split` in `directory`."""
    rng = np.random.default_rng(0)
    writers = [tf.io.TFRecordWriter(os.path.join(
        directory, records.shard_filename(split, i, num_shards))) for i in range(num_shards)]
    sizes = []
    for index in range(num_images):
        example = _voc_like_example(rng, index)
        sizes.append(len(example))
        writers[index % num_shards].write(example)
    for writer in writers:
        writer.close()
    return float(np.mean(sizes))


def images_per_second(dataset, batch_size, warmup_batches, num_batches):
    """(images/s in wall time, CPU milliseconds of the process per image).

    The CPU time per image does not depend on what else runs on the machine: 1000 / it is the
    rate one free core would give.
    """
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
        next(iterator)
    num_images = num_batches * batch_size
    return (num_images / (time.perf_counter() - start),
            (time.process_time() - start_cpu) * 1000 / num_images)


def main(argv):
    del argv
    crop_size = [int(v) for v in FLAGS.crop_size]
    with tempfile.TemporaryDirectory() as temp_dir:
        dataset_dir = FLAGS.dataset_dir
        if dataset_dir is None:
            dataset_dir = temp_dir
            start = time.perf_counter()
            mean_bytes = write_voc_like(dataset_dir, FLAGS.split, FLAGS.num_images)
            print(f"generated {FLAGS.num_images} VOC-like 500x375 JPEG+PNG records "
                  f"({mean_bytes / 1024:.0f} KiB each) in {time.perf_counter() - start:.1f} s")
        common = dict(dataset_name=FLAGS.dataset, dataset_dir=dataset_dir, split=FLAGS.split,
                      batch_size=FLAGS.batch_size, num_readers=FLAGS.num_readers)
        train = input_pipeline.get_dataset(
            crop_size=crop_size, is_training=True, min_scale_factor=FLAGS.min_scale_factor,
            max_scale_factor=FLAGS.max_scale_factor,
            scale_factor_step_size=FLAGS.scale_factor_step_size, **common)
        decode_only = input_pipeline.get_dataset(
            crop_size=crop_size, is_training=True, repeat=True, **common)
        print(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; batch "
              f"{FLAGS.batch_size}, crop {crop_size[0]}x{crop_size[1]}, scale "
              f"{FLAGS.min_scale_factor}-{FLAGS.max_scale_factor} step "
              f"{FLAGS.scale_factor_step_size}, flip")
        args = (FLAGS.batch_size, FLAGS.warmup_batches, FLAGS.num_batches)
        for name, dataset in (("decode + pad/crop/flip (scale 1)", decode_only),
                              ("full training augmentation", train)):
            rate, cpu_ms = images_per_second(dataset, *args)
            print(f"input pipeline, {name:33s} {rate:7.1f} images/s, {cpu_ms:5.1f} CPU ms "
                  f"per image ({1000 / cpu_ms:5.1f} images/s per free core)")
        if FLAGS.model_variant:
            import model_bench  # benchmarks/ is on sys.path when run as a script.
            step = model_bench.bench_variant(FLAGS.model_variant, crop_size[0],
                                             FLAGS.model_batch, repetitions=1)
            step_rate = 1 / step["forward_backward"]
            print(f"training step, {FLAGS.model_variant} forward+backward (model_bench): "
                  f"{step_rate:7.2f} images/s -> pipeline / step = {rate / step_rate:.0f}x")


if __name__ == "__main__":
    app.run(main)
