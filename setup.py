"""Installs deeplab_ssl: DeepLabv3/v3+ training with the structural similarity loss."""
import setuptools

setuptools.setup(
    name="deeplab-ssl",
    version="0.1.0",
    description=(
        "DeepLabv3 / DeepLabv3+ on TensorFlow 2 and Keras 3 with the structural "
        "similarity loss (SSL) of Zhao et al. 2019."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["deeplab_ssl", "deeplab_ssl.*"]),
    # The SSL kernel's source, compiled after installation (deeplab_ssl/losses/ssl_kernel.py).
    package_data={"deeplab_ssl.losses": ["ssl_kernel.cc"]},
    python_requires=">=3.11",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "numpy",
        "absl-py",
        "pillow",
        "tqdm",
        "scipy",  # SBD's .mat labels (VOC train_aug).
        "tensorboard",  # tf.summary needs it; TF 2.21 no longer installs it.
        "tensorflow-datasets",
        "importlib_resources",  # TFDS needs it for builders defined outside TFDS.
    ],
    extras_require={
        # tf-slim: the reference ResNet of a model test; pytest-xdist: `make test` on 2 workers.
        "test": ["pytest", "pytest-xdist", "tf-slim"],
        "plot": ["matplotlib"],
        "crf": ["pydensecrf2"],  # eval.py --crf_iterations; builds from source (C++ compiler).
        # LiteRT, the interpreter of .tflite files (eval.py --tflite_path, predict.py); 2.3 tested.
        "tflite": ["ai-edge-litert"],
        # The losses and models on Keras' JAX backend (KERAS_BACKEND=jax), CPU; for NVIDIA
        # GPUs add 'jax[cuda12]'. tests/test_backends.py runs on it; 0.10 tested.
        "jax": ["jax"],
    },
)
