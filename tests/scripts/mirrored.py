"""Every method under tf.distribute.MirroredStrategy (2 logical CPUs) against one device.

Run as a script (the logical devices must be configured before TensorFlow starts), with
method names or JSON configs as arguments; ``--loop NAME ...`` after them names the
methods also trained with ``credit.distributed.fit`` under the strategy. Prints one JSON
line per method with the largest differences of the final weights and method state:
Keras's ``fit`` under the strategy against one device (``weights``, ``state``), and
``credit.distributed.fit`` against Keras's ``fit`` under the strategy (``loop_*``, with
the epoch logs, validation included for synthetic gradients).
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
from common import away_from_zero  # noqa: E402

L = keras.layers


def build(outputs):
    inputs = keras.Input((6,))
    h1 = L.Dense(8, activation="tanh")(inputs)
    h2 = L.Dense(8, activation="tanh")(h1)
    if outputs == 1:  # kickback needs a chain with one scalar output
        return credit.Model(inputs, L.Dense(1)(h2))
    return credit.Model(inputs, L.Dense(outputs, activation="softmax")(L.Add()([h1, h2])))


def max_diff(a, b):
    return max((float(np.abs(u - v).max()) for u, v in zip(a, b)), default=0.0)


def state(model):
    method_state = model.method.state
    return method_state.get_weights() if method_state is not None else []


def main(argv):
    methods, loop = argv, []
    if "--loop" in argv:
        methods, loop = argv[:argv.index("--loop")], argv[argv.index("--loop") + 1:]
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
        # Validation (it does not depend on the method) for synthetic gradients.
        validation = dataset if credit.get(config).name == "synthetic_gradients" else None

        def trained(scope, train):
            keras.utils.set_random_seed(0)
            with scope:
                model = build(1 if scalar else 3)
                model.set_weights(init)
                model.compile("adam", loss, metrics=metrics, method=config)
            return model, train(model).history

        keras.utils.set_random_seed(0)
        init = away_from_zero(build(1 if scalar else 3).get_weights())

        def keras_fit(model):
            return model.fit(dataset, epochs=2, verbose=0, validation_data=validation)

        one, _ = trained(tf.distribute.get_strategy().scope(), keras_fit)
        two, logs = trained(strategy.scope(), keras_fit)
        row = {"method": spec, "weights": max_diff(one.get_weights(), two.get_weights()),
               "state": max_diff(state(one), state(two)),
               "moved": max_diff(init, two.get_weights()),
               "nearest_zero": min(float(np.abs(w).min()) for w in one.get_weights()
                                   if w.ndim > 1)}
        if spec in loop:
            three, loop_logs = trained(strategy.scope(), lambda model: credit.distributed.fit(
                model, dataset, strategy, epochs=2, verbose=0, validation_data=validation))
            row.update({
                "loop_weights": max_diff(two.get_weights(), three.get_weights()),
                "loop_state": max_diff(state(two), state(three)),
                "loop_logs": max(float(np.abs(np.subtract(logs[k], loop_logs[k])).max())
                                 for k in logs),
                "keys": sorted(logs), "loop_keys": sorted(loop_logs)})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
