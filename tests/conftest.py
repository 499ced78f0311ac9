"""Test setup: quiet TensorFlow, and two logical CPU devices for the replica tests.

Logical devices must be configured before TensorFlow initializes its runtime, so it happens
here, once, for the whole session. Code that does not ask for them still sees /CPU:0 first.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
