"""Test setup: quiet TensorFlow, two logical CPU devices for the replica tests, the SSL kernel.

Logical devices must be configured before TensorFlow initializes its runtime, so it happens
here, once, for the whole session. Code that does not ask for them still sees /CPU:0 first.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A small generated demo set (16 train, 2 val images of 64x80), built once per session."""
    from deeplab_ssl.datasets import build_demo_data
    path = tmp_path_factory.mktemp("demo")
    build_demo_data.build_demo(str(path), num_train=16, num_val=2, height=64, width=80,
                               progress=False)
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def ssl_kernel_built():
    """The SSL's CPU kernel, built if `make install` did not (a failed build fails the tests):
    SSLoss's default, "auto", then uses it on CPU, as it does for users who built it."""
    from deeplab_ssl.losses import ssl_kernel
    if ssl_kernel.load() is None:
        ssl_kernel.build()
        ssl_kernel.load.cache_clear()
    assert ssl_kernel.load() is not None
