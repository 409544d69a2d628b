"""credit.distributed.fit against Keras's own fit, under MirroredStrategy (2 logical CPUs).

Run as a script (the logical devices must be configured before TensorFlow starts):
prints one JSON line per method (a registry name or a JSON config) with the largest
differences of the final weights, the method state and the epoch logs (validation
logs for synthetic gradients) between ``credit.distributed.fit`` and ``model.fit`` of the same credit model
on the same dataset.
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
        metrics = [] if scalar else ["accuracy"]
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        # Validation once (it does not depend on the method): synthetic gradients.
        validation = dataset if credit.get(config).name == "synthetic_gradients" else None
        models, histories = [], []
        for train in ("keras", "credit"):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                model = build(1 if scalar else 3)
                model.compile("adam", loss, metrics=metrics, method=config)
            if train == "keras":
                init = model.get_weights()
                h = model.fit(dataset, epochs=2, verbose=0, validation_data=validation)
            else:
                model.set_weights(init)
                h = credit.distributed.fit(model, dataset, strategy, epochs=2, verbose=0,
                                           validation_data=validation)
            models.append(model)
            histories.append(h.history)
        one, two = models
        weights = max(float(np.abs(a - b).max())
                      for a, b in zip(one.get_weights(), two.get_weights()))
        state = 0.0
        if one.method.state is not None and one.method.state.weights:
            state = max(float(np.abs(a - b).max()) for a, b in
                        zip(one.method.state.get_weights(), two.method.state.get_weights()))
        keys = sorted(histories[0])
        logs = max(float(np.abs(np.subtract(histories[0][k], histories[1][k])).max())
                   for k in keys)
        moved = max(float(np.abs(a - b).max()) for a, b in zip(init, two.get_weights()))
        print(json.dumps({"method": spec, "weights": weights, "state": state, "logs": logs,
                          "keys": keys, "other_keys": sorted(histories[1]),
                          "moved": moved}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
