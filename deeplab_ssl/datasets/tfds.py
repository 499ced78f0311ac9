"""The same data through tensorflow-datasets: a TFDS builder reading the original layouts.

`DeeplabSegmentation` is a TFDS builder with one config per dataset of `descriptors`:

- `pascal_voc_seg`: the VOC 2012 devkit (and SBD for `train_aug`) in the manual directory;
- `cityscapes`: `leftImg8bit/` and `gtFine/` in the manual directory.

It prepares the data once into `data_dir` (TFDS's own files) with the same readers and checks as
the record builders (`build_data.encode_pair`: palette PNGs read as class indices, SBD `.mat`,
Cityscapes labelIds -> trainIds where labelTrainIds are missing, size and label value checks),
and `get_dataset` feeds it to the same preprocessing and batching as
`input_pipeline.get_dataset`, with the same element structure. Nothing is downloaded.

TFDS's own `voc` builder downloads its archive and its `cityscapes` builder wants the zip files
with labelIds (not the 19 train ids) and no SBD, hence this builder.

    from deeplab_ssl.datasets import tfds as deeplab_tfds
    dataset = deeplab_tfds.get_dataset("pascal_voc_seg", "~/tensorflow_datasets", "train_aug",
                                       batch_size=12, crop_size=[513, 513], is_training=True,
                                       manual_dir="~/data/voc", ...)
"""
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from deeplab_ssl.datasets import (build_cityscapes_data, build_data, build_voc2012_data,
                                  descriptors, input_pipeline)

_VOC_ROOT = os.path.join("VOCdevkit", "VOC2012")
# Where SBD's labels may sit in the manual directory: SBD's own `.mat` files, or the
# `SegmentationClassAug` PNGs that many VOC copies carry.
_SBD_FOLDERS = (os.path.join("benchmark_RELEASE", "dataset", "cls"),
                os.path.join(_VOC_ROOT, "SegmentationClassAug"))

_INSTRUCTIONS = {
    "pascal_voc_seg": """\
Put the PASCAL VOC 2012 devkit in the manual directory:
    MANUAL_DIR/VOCdevkit/VOC2012/JPEGImages/*.jpg
    MANUAL_DIR/VOCdevkit/VOC2012/SegmentationClass/*.png (palette or raw class indices)
    MANUAL_DIR/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
and for train_aug (10,582 images) SBD's labels, either
    MANUAL_DIR/benchmark_RELEASE/dataset/cls/*.mat (needs scipy) or
    MANUAL_DIR/VOCdevkit/VOC2012/SegmentationClassAug/*.png
(train_aug = SBD names + VOC train - VOC val, or ImageSets/Segmentation/train_aug.txt).
""",
    "cityscapes": """\
Put Cityscapes in the manual directory:
    MANUAL_DIR/leftImg8bit/{train,val,test}/CITY/*_leftImg8bit.png
    MANUAL_DIR/gtFine/{train,val,test}/CITY/*_gtFine_labelTrainIds.png (or *_labelIds.png)
Splits: train_fine, val_fine, test_fine (those whose folders exist).
""",
}


def _voc_pairs(manual_dir):
    """{split: [(image_path, label_path)]} of the VOC devkit (+ SBD) in manual_dir."""
    root = os.path.join(manual_dir, _VOC_ROOT)
    list_folder = os.path.join(root, "ImageSets", "Segmentation")
    sbd_folder = next((os.path.join(manual_dir, f) for f in _SBD_FOLDERS
                       if tf.io.gfile.isdir(os.path.join(manual_dir, f))), None)
    sbd_format = "png" if sbd_folder and sbd_folder.endswith("Aug") else "mat"
    splits = {}
    for list_path in sorted(tf.io.gfile.glob(os.path.join(list_folder, "*.txt"))):
        split = os.path.splitext(os.path.basename(list_path))[0]
        splits[split] = build_data.read_list(list_path)
    if sbd_folder and build_voc2012_data.TRAIN_AUG not in splits:
        splits[build_voc2012_data.TRAIN_AUG] = build_voc2012_data.train_aug_names(
            list_folder, sbd_folder, sbd_format)
    if not splits:
        raise ValueError(f"no split lists (*.txt) in {list_folder}")
    pairs = {}
    for split, names in splits.items():
        pairs[split] = []
        for name in names:
            # VOC's own label (finer, with the 255 boundary) where there is one, else SBD's.
            label = os.path.join(root, "SegmentationClass", name + ".png")
            if sbd_folder and not tf.io.gfile.exists(label):
                label = os.path.join(sbd_folder, f"{name}.{sbd_format}")
            pairs[split].append((os.path.join(root, "JPEGImages", name + ".jpg"), label))
    return pairs


def _encode_voc(pair):
    voc = descriptors.get_descriptor("pascal_voc_seg")
    return build_data.encode_pair(*pair, voc.num_classes, voc.ignore_label)


def _cityscapes_pairs(manual_dir):
    """{split: [(image_path, label_path)]} of the Cityscapes splits found in manual_dir."""
    pairs = {split: build_cityscapes_data.list_pairs(manual_dir, split)
             for split, folders in build_cityscapes_data.SPLIT_FOLDERS.items()
             if all(tf.io.gfile.isdir(os.path.join(manual_dir, "leftImg8bit", folder))
                    for folder in folders)}
    if not pairs:
        raise ValueError(f"no Cityscapes split folder in {manual_dir}/leftImg8bit")
    return pairs


# Per config: the files of each split, and the record builder's reader and checks for a pair
# (a ValueError names the file at fault), giving a record in deeplab's schema.
_PAIRS = {"pascal_voc_seg": _voc_pairs, "cityscapes": _cityscapes_pairs}
_ENCODE = {"pascal_voc_seg": _encode_voc,
           "cityscapes": build_cityscapes_data.encode_pair}


class DeeplabSegmentation(tfds.core.GeneratorBasedBuilder):
    """Semantic segmentation in deeplab's label convention, from the original layouts.

    Features: `image` uint8 [H, W, 3] (the original JPEG/PNG bytes), `label` uint8 [H, W, 1]
    (class indices, the descriptor's ignore label), `filename` text (deeplab's image/filename).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=name, description=f"deeplab's {name} from the manual dir")
        for name in _PAIRS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "\n".join(
        f"Config {name}:\n{text}" for name, text in _INSTRUCTIONS.items())

    def _info(self):
        descriptor = descriptors.get_descriptor(self.builder_config.name)
        return self.dataset_info_from_configs(
            description=(f"{descriptor.name}: {descriptor.num_classes} classes, ignore label "
                         f"{descriptor.ignore_label}."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                "filename": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            # Keep the order of the lists, as deeplab's records do; training shuffles anyway.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        pairs = _PAIRS[self.builder_config.name](os.fspath(dl_manager.manual_dir))
        return {split: self._generate_examples(split_pairs)
                for split, split_pairs in pairs.items()}

    def _generate_examples(self, pairs):
        encode = _ENCODE[self.builder_config.name]
        for pair in pairs:
            feature = tf.train.Example.FromString(encode(pair)).features.feature
            yield pair[0], {
                "image": feature["image/encoded"].bytes_list.value[0],
                "label": feature["image/segmentation/class/encoded"].bytes_list.value[0],
                "filename": feature["image/filename"].bytes_list.value[0].decode(),
            }


def get_dataset(dataset_name, data_dir, split, batch_size, manual_dir=None, crop_size=None,
                is_training=False, min_scale_factor=1.0, max_scale_factor=1.0,
                scale_factor_step_size=0.0, min_resize_value=None, max_resize_value=None,
                resize_factor=None, mean_pixel=(127.5, 127.5, 127.5), num_readers=4,
                shuffle=None, shuffle_buffer_size=100, repeat=None, deterministic=None,
                seed=None, input_context=None):
    """`input_pipeline.get_dataset` over the TFDS build of a dataset.

    Args:
        dataset_name: "pascal_voc_seg" or "cityscapes" (a config of DeeplabSegmentation).
        data_dir: str, TFDS's data directory (where the prepared dataset is written / read).
        split: str, a split found in the manual directory (e.g. "train_aug", "val_fine"), or
            a TFDS split expression such as "train+val" or "train[:10%]".
        batch_size: int, the global batch size (see input_pipeline.get_dataset).
        manual_dir: str, the folder with the original files (see DeeplabSegmentation's
            MANUAL_DOWNLOAD_INSTRUCTIONS); needed the first time only, to prepare data_dir.
        Others: as input_pipeline.get_dataset. Bad files stop the preparation with a
            ValueError naming them, so there is no skip_bad_records.

    Returns:
        tf.data.Dataset with the element structure of input_pipeline.get_dataset.
    """
    descriptor = descriptors.get_descriptor(dataset_name)
    if dataset_name not in _PAIRS:
        raise ValueError(f"no TFDS build of {dataset_name!r}; known: {sorted(_PAIRS)}")
    shuffle, repeat, deterministic = input_pipeline.resolve_defaults(
        is_training, crop_size, shuffle, repeat, deterministic)
    builder = DeeplabSegmentation(config=dataset_name, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir))

    shard_records = False
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        num_files = builder.info.splits[split].num_shards
        shard_records = num_files < input_context.num_input_pipelines
        if seed is not None:
            seed += input_context.input_pipeline_id
    # Without shuffling, files are read one after the other to keep the order of the lists.
    read_config = tfds.ReadConfig(
        input_context=None if shard_records else input_context, shuffle_seed=seed,
        interleave_cycle_length=num_readers if shuffle else 1, enable_ordering_guard=False)
    # Encoded images are shuffled (cheap), and decoded after.
    dataset = builder.as_dataset(
        split=split, shuffle_files=shuffle, read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()})
    if shard_records:
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    dataset = input_pipeline.shuffle_and_repeat(
        dataset, shuffle, shuffle_buffer_size, repeat, seed)
    features = builder.info.features

    def decode(example):
        return {"image": features["image"].decode_example(example["image"]),
                "label": features["label"].decode_example(example["label"]),
                "filename": example["filename"]}

    examples = dataset.map(decode, num_parallel_calls=input_pipeline.AUTOTUNE)
    return input_pipeline.preprocess_and_batch(
        examples, batch_size, is_training, seed, deterministic,
        **input_pipeline.preprocess_options(
            crop_size, min_resize_value, max_resize_value, resize_factor, min_scale_factor,
            max_scale_factor, scale_factor_step_size, mean_pixel, descriptor.ignore_label))
