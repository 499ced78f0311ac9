"""Builds the SSL's CPU kernel (ssl_kernel.py) for the installed TensorFlow.

    python -m deeplab_ssl.losses.build_kernel

Exits with the compiler's output on failure; SSLoss then keeps its XLA path.
"""
import sys

from deeplab_ssl.losses import ssl_kernel

if __name__ == "__main__":
    try:
        print(f"Built {ssl_kernel.build()}")
    except RuntimeError as error:
        sys.exit(str(error))
