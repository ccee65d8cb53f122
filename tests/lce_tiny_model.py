"""Write a tiny LCE .tflite (a float conv, one LceBconv2d, a dense layer): `python THIS OUT`.

A larq model converted with larq_compute_engine.convert_keras_model, run as its own process
(tf-keras needs TF_USE_LEGACY_KERAS=1 before TensorFlow is imported; LCE's converter may
abort the process on a bad graph). Input 8x8x1 like the digits dataset; weights are random,
so its accuracy is chance level. The file carries no bnn-export metadata (a foreign .tflite).
"""

import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import larq  # noqa: E402
import larq_compute_engine as lce  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


def main(out: str) -> None:
    tf.random.set_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = larq.layers.QuantConv2D(
        32, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip", pad_values=1.0, padding="same", use_bias=False,
    )(x)  # fmt: skip
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10)(x)
    flatbuffer = lce.convert_keras_model(keras.Model(inputs, outputs))
    with open(out, "wb") as f:
        f.write(flatbuffer)


if __name__ == "__main__":
    main(sys.argv[1])
