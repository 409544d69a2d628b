"""Every method under tf.distribute.MirroredStrategy (2 logical CPUs) against one device.

Run as a script (the logical devices must be configured before TensorFlow starts):
prints one JSON line per method with the largest weight and method-state differences.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import credit  # noqa: E402

L = keras.layers


def build(outputs):
    inputs = keras.Input((6,))
    h1 = L.Dense(8, activation="tanh")(inputs)
    h2 = L.Dense(8, activation="tanh")(h1)
    if outputs == 1:  # kickback needs a chain with one scalar output
        return credit.Model(inputs, L.Dense(1)(h2))
    return credit.Model(inputs, L.Dense(outputs, activation="softmax")(L.Add()([h1, h2])))


def main(methods):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    labels = rng.integers(0, 3, size=32)
    targets = rng.normal(size=(32, 1)).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for spec in methods:
        config = json.loads(spec) if spec.startswith("{") else {"name": spec}
        config = {**config, "seed": 1}
        scalar = credit.get(config).name == "kickback"
        y, loss = (targets, "mse") if scalar else (labels, "sparse_categorical_crossentropy")
        keras.utils.set_random_seed(0)
        one = build(1 if scalar else 3)
        init = one.get_weights()
        one.compile("adam", loss, method=config)
        one.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        with strategy.scope():
            two = build(1 if scalar else 3)
            two.set_weights(init)
            two.compile("adam", loss, method=config)
        two.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        weights = max(float(np.abs(a - b).max())
                      for a, b in zip(one.get_weights(), two.get_weights()))
        state = 0.0
        if one.method.state is not None and one.method.state.weights:
            state = max(float(np.abs(a - b).max()) for a, b in
                        zip(one.method.state.get_weights(), two.method.state.get_weights()))
        moved = max(float(np.abs(a - b).max()) for a, b in zip(init, two.get_weights()))
        print(json.dumps({"method": spec, "weights": weights, "state": state,
                          "moved": moved}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
