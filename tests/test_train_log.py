"""The logs of a training run (train_log): train_log.jsonl and TensorBoard."""
import json
import os

import keras
import numpy as np
import tensorflow as tf

from deeplab_ssl import train_log


def read_log(logdir):
    with open(os.path.join(logdir, train_log.TRAIN_LOG_NAME)) as f:
        return [json.loads(line) for line in f]


def event_tags(logdir):
    return {value.tag for path in tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*"))
            for event in tf.compat.v1.train.summary_iterator(path)
            for value in event.summary.value}


def test_the_chief_logs_records_scalars_per_class_and_pictures(tmp_path):
    logger = train_log.TrainLogger(str(tmp_path), 0, 10, 4, is_chief=True, colormap="demo")
    logger.log(1, dict(learning_rate=0.01, loss=0.5), dict(class_share=[0.25, 0.75]))
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 1)])
    images = np.zeros((4, 8, 8, 3), np.float32)
    labels = np.full((4, 8, 8, 1), 255, np.int32)  # The ignore label: beyond a small colormap.
    logger.write_images(model, images, labels, 1)
    logger.flush()
    [record] = read_log(tmp_path)
    assert record["step"] == 1 and record["loss"] == 0.5 and record["images_per_second"] > 0
    assert record["class_share"] == [0.25, 0.75]
    assert {"learning_rate", "loss", "images_per_second", "class_share/0", "class_share/1",
            "samples/image", "samples/label", "samples/prediction"} <= event_tags(tmp_path)


def test_other_workers_write_nothing(tmp_path):
    logger = train_log.TrainLogger(str(tmp_path), 0, 10, 4, is_chief=False, colormap="demo")
    logger.log(1, dict(loss=0.5), {})
    logger.write_images(None, None, None, 1)  # Returns before using them.
    logger.flush()
    assert not os.listdir(tmp_path)


def test_a_resumed_log_drops_the_steps_after_the_checkpoint(tmp_path):
    log = train_log.TrainLog(str(tmp_path), 0)
    for step in range(1, 6):
        log.append(dict(step=step))
    train_log.TrainLog(str(tmp_path), 3).append(dict(step=4))  # Resumed at step 3.
    assert [record["step"] for record in read_log(tmp_path)] == [1, 2, 3, 4]
