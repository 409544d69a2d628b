"""Write the models that tests/test_synthesizer_sizes.py loads as "saved before the
sizing options existed" (tests/data/legacy_*.keras and their .npz references).

Run it with the library of a version before ``width``/``max_points`` (e.g. commit
23010df, exported with ``git archive 23010df | tar -x -C OLD``)::

    PYTHONPATH=OLD python tests/scripts/legacy_sizing_models.py tests/data

The model has 18 hidden blocks (more than the current default ``max_points=16``) and
one 65-channel block (wider than ``width=64``): under the current defaults it would get
other synthesizers and heads than the ones saved, so loading it checks that a config
without the sizing keys is read as the version that wrote it meant it.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import credit  # noqa: E402

L = keras.layers


def model():
    keras.utils.set_random_seed(0)
    layers = [keras.Input((4, 4, 2)),
              L.Conv2D(65, 1, activation="relu", name="wide")]
    layers += [L.Conv2D(2, 1, activation="relu", name=f"c{i}") for i in range(1, 18)]
    layers += [L.GlobalAveragePooling2D(name="gap"),
               L.Dense(3, activation="softmax", name="out")]
    return credit.Sequential(layers)


METHODS = {
    "sg": {"name": "synthetic_gradients", "seed": 0, "kernel_size": 1},
    "local": {"name": "local_losses", "seed": 0},
}


def data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(8, 4, 4, 2)).astype("float32"),
            rng.integers(0, 3, size=8))


def main(folder):
    x, y = data()
    for key, config in METHODS.items():
        net = model()
        net.compile("adam", "sparse_categorical_crossentropy", method=credit.get(config))
        for _ in range(2):
            net.train_on_batch(x, y)
        method = net.method
        layers = method.state.synthesizer_layers
        points = list(getattr(method, "boundaries", None) or method.points)
        np.savez(os.path.join(folder, f"legacy_{key}.npz"), points=np.array(points),
                 prediction=net.predict(x, verbose=0),
                 **{f"w{i}": v.numpy() for i, v in
                    enumerate(w for s in layers for w in s.weights)})
        net.save(os.path.join(folder, f"legacy_{key}.keras"))
        print(key, len(points), "points", sum(int(np.prod(w.shape)) for s in layers
                                               for w in s.weights), "weights")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data")
