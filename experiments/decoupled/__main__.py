"""``python -m experiments.decoupled``: see :mod:`experiments.decoupled`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

if __name__ == "__main__":
    import sys

    from experiments.decoupled.cli import main

    main(sys.argv[1:])
