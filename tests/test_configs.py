"""Every flagfile of configs/ parses with train.py's flags and holds the paper's settings."""
import glob
import importlib.util
import os

import pytest
from absl import flags

from deeplab_ssl import common, train_utils
from deeplab_ssl.core import feature_extractor
from deeplab_ssl.datasets import descriptors, input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(path, ROOT)
                 for path in glob.glob(os.path.join(ROOT, "configs", "**", "*.flags"),
                                       recursive=True))
FLAGS = flags.FLAGS


def _includes(path):
    with open(os.path.join(ROOT, path)) as f:
        return [line.strip().split("=", 1)[1] for line in f if line.startswith("--flagfile=")]


_INCLUDED = {included for path in CONFIGS for included in _includes(path)}
# Model and dataset flagfiles (included, including nothing): also read by eval.py, vis.py and
# export.py, so they may only hold the flags of deeplab_ssl/common.py.
MODEL_CONFIGS = sorted(path for path in _INCLUDED if not _includes(path))
# Training bases that experiments include: complete but for the train_logdir.
BASE_CONFIGS = sorted(_INCLUDED - set(MODEL_CONFIGS))
EXPERIMENTS = sorted(set(CONFIGS) - _INCLUDED)


def _load_train_module():
    spec = importlib.util.spec_from_file_location("train", os.path.join(ROOT, "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = _load_train_module()
DEMO = descriptors.get_descriptor("demo")


@pytest.fixture
def parse(monkeypatch):
    """Parses a flagfile as `python train.py --flagfile=PATH` from the repository root."""
    monkeypatch.chdir(ROOT)

    def parse_flagfile(path):
        FLAGS.unparse_flags()
        FLAGS(["train.py", f"--flagfile={path}"])
        return FLAGS

    yield parse_flagfile
    FLAGS.unparse_flags()


def test_the_papers_model_flagfiles_are_shared():
    assert {"configs/demo.flags", "configs/pascal_voc/deeplabv3.flags",
            "configs/pascal_voc/deeplabv3plus.flags",
            "configs/cityscapes/deeplabv3.flags"} <= set(MODEL_CONFIGS)


def test_there_is_a_flagfile_per_experiment():
    names = {os.path.basename(path) for path in CONFIGS}
    assert len(CONFIGS) >= 90
    for size in (1, 3, 5, 7, 9, 11):  # Table 2, DeepLabv3.
        assert f"deeplabv3_ssl{size}_stage1.flags" in names
    for size in (1, 3, 7, 11):  # Table 2, DeepLabv3+.
        assert f"deeplabv3plus_ssl{size}_stage2.flags" in names
    assert {"deeplabv3_ssim7_3_stage1.flags", "deeplabv3_ssim9_11_stage2.flags",
            "deeplabv3_ssl3_ohem_only_stage1.flags", "deeplabv3_ssl3_sigma3.5_stage2.flags",
            "deeplabv3_ssl3_beta0.06_stage1.flags", "deeplabv3_crop321_affinity_stage1.flags",
            "deeplabv3_ssl9.flags", "demo_train.flags"} <= names


@pytest.mark.parametrize("path", CONFIGS)
def test_flagfile_parses_into_valid_training_settings(parse, monkeypatch, path):
    f = parse(path)
    # --class_weighting reads the train split, which a clean clone has not built: one pixel of
    # each class stands in.
    monkeypatch.setattr(input_pipeline, "label_histogram",
                        lambda descriptor, *_: ([1] * descriptor.num_classes,) * 2)
    descriptor = descriptors.get_descriptor(f.dataset)
    assert f.model_variant in feature_extractor.MODEL_VARIANTS
    if path in MODEL_CONFIGS:
        return
    if path in BASE_CONFIGS:
        assert f.train_logdir is None  # Each experiment has its own.
        f.train_logdir = "unused"
    descriptor.split_size(f.train_split)
    train.train_options()  # Raises naming a bad flag.
    train.make_loss(descriptor)
    assert min(train.crop_size()) > 0


@pytest.mark.parametrize("path", MODEL_CONFIGS)
def test_model_flagfiles_hold_only_shared_flags(path):
    shared = {flag.name for flag in FLAGS.get_flags_for_module(common)}
    with open(os.path.join(ROOT, path)) as f:
        names = [line.strip()[2:].split("=")[0] for line in f
                 if line.startswith("--")]
    for name in names:
        assert name in shared or (name.startswith("no") and name[2:] in shared), (path, name)


def _experiments(pattern):
    return [path for path in EXPERIMENTS if glob.fnmatch.fnmatch(path, pattern)]


@pytest.mark.parametrize("path", _experiments("configs/pascal_voc/*_stage1.flags"))
def test_voc_stage1_is_the_papers(parse, path):
    f = parse(path)
    assert (f.dataset, f.train_split) == ("pascal_voc_seg", "train_aug")
    assert (f.training_number_of_steps, f.base_learning_rate) == (30000, 0.007)
    assert (f.slow_start_step, f.slow_start_learning_rate) == (100, 0.001)
    assert (f.learning_policy, f.learning_power, f.momentum) == ("poly", 0.9, 0.9)
    assert (f.min_scale_factor, f.max_scale_factor) == (0.5, 2.0)
    assert f.fine_tune_batch_norm and f.output_stride == 16
    assert f.tf_initial_checkpoint.startswith("init_models/")
    crop, batch = train.crop_size(), f.train_batch_size
    if "crop321" in path:
        assert (crop, batch) == ([321, 321], 16)
    elif "deeplabv3plus" in path:
        assert (crop, batch, f.model_variant) == ([393, 393], 12, "xception_65")
        assert f.decoder_output_stride == [4]
    else:
        assert (crop, batch, f.model_variant) == ([513, 513], 12, "resnet_v1_101_beta")
    assert f.atrous_rates == [6, 12, 18]


@pytest.mark.parametrize("path", _experiments("configs/pascal_voc/*_stage2.flags"))
def test_voc_stage2_continues_stage1(parse, path):
    f = parse(path)
    assert f.train_split == "train"
    assert (f.training_number_of_steps, f.base_learning_rate) == (20000, 0.0005)
    assert (f.slow_start_step, f.slow_start_learning_rate) == (100, 0.0001)
    assert not f.fine_tune_batch_norm
    stage2_logdir = f.train_logdir
    assert stage2_logdir.endswith("/stage2")
    f = parse(path.replace("_stage2.flags", "_stage1.flags"))
    assert stage2_logdir.replace("/stage2", "/stage1") == f.train_logdir
    stage1_loss = (f.loss, f.ssl_window_size, f.ssl_sigma, f.ssl_beta, f.ssl_ohem,
                   f.ssl_reweight)
    f = parse(path)
    assert f.tf_initial_checkpoint == f.train_logdir.replace("/stage2", "/stage1")
    assert (f.loss, f.ssl_window_size, f.ssl_sigma, f.ssl_beta, f.ssl_ohem,
            f.ssl_reweight) == stage1_loss


@pytest.mark.parametrize("path", _experiments("configs/cityscapes/deeplabv3_*.flags"))
def test_cityscapes_is_the_papers(parse, path):
    f = parse(path)
    assert (f.dataset, f.train_split) == ("cityscapes", "train_fine")
    assert (train.crop_size(), f.train_batch_size) == ([669, 669], 8)
    assert (f.training_number_of_steps, f.base_learning_rate) == (90000, 0.007)
    assert (f.min_scale_factor, f.max_scale_factor) == (0.75, 1.25)


def test_train_logdirs_are_unique(parse):
    logdirs = {}
    for path in EXPERIMENTS:
        logdir = parse(path).train_logdir
        assert logdir not in logdirs, (path, logdirs.get(logdir))
        logdirs[logdir] = path


def test_ablation_switches(parse):
    f = parse("configs/pascal_voc/deeplabv3_ssl3_ohem_only_stage1.flags")
    assert (f.loss, f.ssl_ohem, f.ssl_reweight) == ("ssl", True, False)
    f = parse("configs/pascal_voc/deeplabv3_ssl3_reweight_only_stage1.flags")
    assert (f.loss, f.ssl_ohem, f.ssl_reweight) == ("ssl", False, True)
    f = parse("configs/pascal_voc/deeplabv3_ssl3_beta0.14_stage2.flags")
    assert (f.ssl_window_size, f.ssl_beta, f.ssl_sigma) == (3, 0.14, 1.5)
    f = parse("configs/pascal_voc/deeplabv3_ssim9_11_stage1.flags")
    assert (f.loss, f.ssl_window_size) == ("ssim9", 11)


@pytest.mark.parametrize("argv, flag", [
    (["--train_crop_size=513,x"], "train_crop_size"),
    (["--train_crop_size=1,2,3"], "train_crop_size"),
    (["--min_scale_factor=2", "--max_scale_factor=1"], "min_scale_factor"),
    (["--loss=dice"], "loss"),
])
def test_bad_flags_are_named(parse, argv, flag):
    FLAGS.unparse_flags()
    with pytest.raises(flags.Error, match=flag):
        FLAGS(["train.py", "--flagfile=configs/demo_train.flags", *argv])


def test_loss_errors_name_the_flags(parse):
    parse("configs/demo_train.flags")
    FLAGS.ssl_beta = 1.5
    with pytest.raises(ValueError, match="--loss=ssl"):
        train.make_loss(DEMO)


def test_one_crop_size_is_square(parse):
    parse("configs/demo_train.flags")
    FLAGS.train_crop_size = ["321"]
    assert train.crop_size() == [321, 321]


def test_the_last_crop_size_counts(parse):
    parse("configs/demo_train.flags")  # --train_crop_size=129,129
    FLAGS(["train.py", "--train_crop_size=361,481"])
    assert train.crop_size() == [361, 481]
    FLAGS(["train.py", "--train_crop_size=513", "--train_crop_size=513"])  # deeplab's export.
    assert train.crop_size() == [513, 513]
    with pytest.raises(flags.Error, match="train_crop_size"):
        FLAGS(["train.py", "--train_crop_size=0,513"])


def test_loss_flags_map_to_constructor_arguments(parse):
    parse("configs/demo_train.flags")
    FLAGS(["train.py", "--loss=topk_ce"])
    assert train.make_loss(DEMO).top_k_percent_pixels == 0.25  # topk_ce's own default.
    FLAGS(["train.py", "--top_k_percent_pixels=0.5"])
    assert train.make_loss(DEMO).top_k_percent_pixels == 0.5
    FLAGS(["train.py", "--loss=ssl", "--ssl_window_size=7", "--nossl_reweight"])
    loss = train.make_loss(descriptors.get_descriptor("camvid"))
    assert (loss.window_size, loss.reweight, loss.ohem, loss.ignore_label) == (7, False, True, 11)


def test_class_weights_from_the_flags(parse, demo_dir):
    parse("configs/demo_train.flags")
    FLAGS(["train.py", "--loss=softmax_ce", "--class_weights=" + ",".join(["1"] * 9 + ["2.5"])])
    assert train.make_loss(DEMO).class_weights == [1.0] * 9 + [2.5]
    FLAGS(["train.py", "--class_weights=1,2"])
    with pytest.raises(ValueError, match="--class_weights has 2 weights, --dataset=demo 10"):
        train.make_loss(DEMO)
    FLAGS(["train.py", "--class_weights=1,x"])
    with pytest.raises(ValueError, match="not a number"):
        train.make_loss(DEMO)
    FLAGS(["train.py", "--class_weighting=median_frequency"])
    with pytest.raises(ValueError, match="not both"):
        train.make_loss(DEMO)
    FLAGS.class_weights = None
    FLAGS.dataset_dir = demo_dir
    FLAGS(["train.py", "--loss=topk_ce"])
    loss = train.make_loss(DEMO)
    assert loss.top_k_percent_pixels == 0.25
    assert loss.class_weights == train_utils.median_frequency_weights(
        *input_pipeline.label_histogram(DEMO, demo_dir, "train"))
    FLAGS(["train.py", "--loss=ssl"])
    with pytest.raises(ValueError, match="apply to softmax_ce and topk_ce"):
        train.make_loss(DEMO)
