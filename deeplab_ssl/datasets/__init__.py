"""Dataset descriptors, deeplab record builders and the tf.data input pipeline."""
