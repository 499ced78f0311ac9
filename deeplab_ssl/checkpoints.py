"""Loading deeplab / TF-slim checkpoints by variable name, and Keras weight files.

`load_slim_checkpoint` is deeplab's `--tf_initial_checkpoint`: it reads a checkpoint of the
original code (model zoo ImageNet backbones such as `xception_65` or `resnet_v1_101_beta`, or
trained DeepLab checkpoints) with `tf.train.load_checkpoint` and assigns each model variable the
checkpoint tensor of its slim name:

    Keras layer `resnet_v1_101.block1.unit_1.bottleneck_v1.conv1`, variable `kernel`
        <- `resnet_v1_101/block1/unit_1/bottleneck_v1/conv1/weights`
    DepthwiseConv2D kernel -> `.../depthwise_weights`, bias -> `.../biases`,
    BatchNormalization gamma / beta / moving_mean / moving_variance -> same names.
"""
import dataclasses
import os

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from deeplab_ssl import errors
from deeplab_ssl import model as model_lib
from deeplab_ssl.core import utils

_BATCH_NORM_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")
# Present in checkpoints written by tf.train.Checkpoint (TF2), absent from TF-slim ones.
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def slim_variable_name(layer, variable):
    """deeplab / TF-slim checkpoint name of a Keras variable of `layer`.

    Args:
        layer: keras Layer named by `deeplab_ssl.core.utils.layer_name`.
        variable: one of the layer's variables.

    Returns:
        str, e.g. 'xception_65/entry_flow/conv1_1/BatchNorm/moving_mean'.

    Raises:
        ValueError: for a variable that has no slim counterpart.
    """
    short_name = variable.path.rsplit("/", 1)[-1]
    if isinstance(layer, keras.layers.DepthwiseConv2D) and short_name == "kernel":
        slim_name = "depthwise_weights"
    elif isinstance(layer, keras.layers.Conv2D) and short_name == "kernel":
        slim_name = "weights"
    elif isinstance(layer, keras.layers.Conv2D) and short_name == "bias":
        slim_name = "biases"
    elif isinstance(layer, keras.layers.BatchNormalization) and short_name in _BATCH_NORM_NAMES:
        slim_name = short_name
    else:
        raise ValueError("No TF-slim name for variable %s of layer %s." % (variable.path,
                                                                            layer.name))
    return utils.slim_scope(layer.name) + "/" + slim_name


def slim_variables(model):
    """dict slim name -> Keras variable for every variable of a model from build_deeplab."""
    names = {}
    for layer in model.layers:
        for variable in layer.weights:
            names[slim_variable_name(layer, variable)] = variable
    return names


@dataclasses.dataclass
class LoadReport:
    """What `load_slim_checkpoint` did; str() gives a readable summary for the logs.

    Attributes:
        checkpoint: path of the checkpoint read.
        loaded: slim names assigned from the checkpoint (when an error is raised: the names that
            matched, nothing having been assigned).
        missing: slim names of model variables the checkpoint lacks (left as initialized).
        wrong_shape: (name, model shape, checkpoint shape) of variables not assigned.
        skipped: slim names excluded on purpose (last layers with initialize_last_layer=False).
        unused: checkpoint names no model variable uses (global_step, optimizer slots, ...).
    """
    checkpoint: str
    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    wrong_shape: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    unused: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = ["Checkpoint %s: %d variables matched, %d missing, %d with a wrong shape, "
                 "%d skipped, %d checkpoint tensors unused."
                 % (self.checkpoint, len(self.loaded), len(self.missing), len(self.wrong_shape),
                    len(self.skipped), len(self.unused))]
        lines += ["  missing: %s" % name for name in self.missing]
        lines += ["  wrong shape: %s model %s checkpoint %s" % item for item in self.wrong_shape]
        lines += ["  skipped: %s" % name for name in self.skipped]
        return "\n".join(lines)


def resolve_checkpoint(checkpoint_path, missing_ok=False):
    """A checkpoint prefix: `checkpoint_path` itself, or the latest checkpoint of a folder.

    Args:
        checkpoint_path: str, a checkpoint prefix or a folder.
        missing_ok: bool, return None where there is no checkpoint (a train_logdir before its
            first save, or not made yet) instead of raising.

    Raises:
        errors.UserError naming the path if no checkpoint is there (unless missing_ok).
    """
    if tf.io.gfile.isdir(checkpoint_path):
        latest = tf.train.latest_checkpoint(checkpoint_path)
        if latest is None and not missing_ok:
            raise errors.UserError(f"no checkpoint in folder {checkpoint_path!r}")
        return latest
    if not tf.io.gfile.exists(checkpoint_path + ".index"):
        if missing_ok:
            return None
        raise errors.UserError(f"no checkpoint {checkpoint_path!r} (missing "
                               f"{checkpoint_path + '.index'})")
    return checkpoint_path


def is_object_based(checkpoint_path):
    """Whether a checkpoint prefix was written by tf.train.Checkpoint (train.py), not TF-slim."""
    return tf.train.load_checkpoint(checkpoint_path).has_tensor(_OBJECT_GRAPH_KEY)


def checkpoint_step(checkpoint_path):
    """The training step in a checkpoint name `.../model.ckpt-STEP`, or 0 if it has none."""
    suffix = checkpoint_path.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def restore_model(model, checkpoint_path, model_options=None):
    """Restores `model`'s variables from a train.py checkpoint (`tf.train.Checkpoint(model=...)`).

    The optimizer and other training state in the checkpoint are skipped. The model and the
    checkpoint's `model` must hold the same variables with the same shapes.

    Args:
        model: the built keras.Model.
        checkpoint_path: checkpoint prefix or a folder (the latest checkpoint in it is used).
        model_options: optional dict of the build_deeplab arguments (flags) the model was built
            with, named in the error.

    Returns:
        the checkpoint prefix that was restored.

    Raises:
        errors.UserError (a ValueError) naming the path if there is no checkpoint, or naming
        the checkpoint and the model options if they do not match.
    """
    checkpoint_path = resolve_checkpoint(checkpoint_path)
    try:
        # Checked before restoring: a failed restore buries its error under a warning per
        # variable of the checkpoint left unrestored.
        in_checkpoint = _checkpoint_model_variable_shapes(checkpoint_path)
        in_model = sorted(tuple(trackable.shape)
                          for trackable in tf.train.TrackableView(model).descendants()
                          if isinstance(trackable, (keras.Variable, tf.Variable)))
        if in_checkpoint != in_model:
            raise AssertionError(
                f"the checkpoint's model has {len(in_checkpoint)} variables, the model "
                f"{len(in_model)}" + ("" if len(in_checkpoint) != len(in_model) else
                                      ", of other shapes"))
        status = tf.train.Checkpoint(model=model).restore(checkpoint_path)
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
        options = ", ".join(f"{name}={value}" for name, value in (model_options or {}).items())
        # The first line of TensorFlow's error: the rest lists every variable.
        detail = str(error).strip().split("\n")[0]
        raise errors.UserError(
            f"checkpoint {checkpoint_path!r} does not match the model built from "
            f"{options or 'the default model flags'}; check model_variant, depth_multiplier, "
            f"decoder_output_stride, atrous_rates and the dataset's num_classes ({detail})"
        ) from error
    return checkpoint_path


def _checkpoint_model_variable_shapes(checkpoint_path):
    """The sorted shapes (tuples) of the variables under the `model` object of a
    tf.train.Checkpoint file."""
    reader = tf.train.load_checkpoint(checkpoint_path)
    shapes = reader.get_variable_to_shape_map()
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
    pending = [child.node_id for child in graph.nodes[0].children if child.local_name == "model"]
    if not pending:
        raise AssertionError("the checkpoint has no `model` object")
    seen = set(pending)
    while pending:
        for child in graph.nodes[pending.pop()].children:
            if child.node_id not in seen:
                seen.add(child.node_id)
                pending.append(child.node_id)
    return sorted(tuple(shapes[attribute.checkpoint_key]) for node in seen
                  for attribute in graph.nodes[node].attributes
                  if attribute.name == "VARIABLE_VALUE")


def load_slim_checkpoint(model, checkpoint_path, initialize_last_layer=True,
                         last_layers_contain_logits_only=False, ignore_missing_vars=True):
    """Assigns a deeplab / TF-slim checkpoint to a build_deeplab model by variable name.

    As deeplab's train_utils.get_model_init_fn: when `initialize_last_layer` is False the last
    layers (the logits only, or the whole head: logits, image_pooling, aspp, concat_projection,
    decoder) are not restored, e.g. for a different number of classes.

    Args:
        model: keras.Model from build_deeplab.
        checkpoint_path: checkpoint prefix (e.g. '.../model.ckpt') or a directory.
        initialize_last_layer: bool, restore the last layers too.
        last_layers_contain_logits_only: bool, the last layers are the logits only.
        ignore_missing_vars: bool; False raises when model variables are missing.

    Returns:
        LoadReport.

    Raises:
        errors.UserError (a ValueError): if there is no such checkpoint, if a variable has the
            wrong shape (nothing is assigned then), if nothing at all matched (wrong
            model_variant?), or on missing variables without ignore_missing_vars.
    """
    path = resolve_checkpoint(checkpoint_path)
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    last_layers = ([] if initialize_last_layer else
                   model_lib.get_extra_layer_scopes(last_layers_contain_logits_only))
    report = LoadReport(checkpoint=path)
    assignments = []
    for name, variable in slim_variables(model).items():
        if any(name.startswith(scope) for scope in last_layers):
            report.skipped.append(name)
        elif name not in shapes:
            report.missing.append(name)
        elif tuple(shapes[name]) != tuple(variable.shape):
            report.wrong_shape.append((name, tuple(variable.shape), tuple(shapes[name])))
        else:
            assignments.append((name, variable))
    report.loaded = [name for name, _ in assignments]
    report.unused = sorted(set(shapes) - set(report.loaded) - set(report.skipped))
    if report.wrong_shape:
        raise errors.UserError("Nothing assigned: variables of checkpoint %s do not fit the model "
                               "(another num_classes? use initialize_last_layer=False).\n%s"
                               % (path, report))
    if not assignments:
        if _OBJECT_GRAPH_KEY in shapes:
            raise errors.UserError("%s is an object-based checkpoint (e.g. from train.py), not a "
                                   "TF-slim one: restore it with tf.train.Checkpoint(model=model)."
                                   % path)
        raise errors.UserError("Nothing assigned: no variable of model %s in checkpoint %s "
                               "(another model_variant?).\n%s" % (model.name, path, report))
    if report.missing and not ignore_missing_vars:
        raise errors.UserError("Nothing assigned: model variables missing from checkpoint %s.\n%s"
                               % (path, report))
    for name, variable in assignments:
        variable.assign(reader.get_tensor(name))
    return report


def load_weights(model, path):
    """Loads a Keras weights file (`.weights.h5`, or the weights of a `.keras` file).

    Args:
        model: keras.Model with the architecture the file was saved from.
        path: local path.

    Raises:
        errors.UserError (a ValueError): naming the file when it does not exist or its weights
            do not fit the model.
    """
    if not os.path.exists(path):
        raise errors.UserError("Weights file %s not found." % path)
    try:
        model.load_weights(path)
    except (ValueError, KeyError) as error:
        raise errors.UserError("Weights file %s does not fit model %s: %s"
                               % (path, model.name, error)) from error
