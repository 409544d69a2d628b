"""Helpers shared by the test scripts (run as files: this folder is on sys.path)."""

import numpy as np


def away_from_zero(weights, margin=0.02):
    """Kernels moved ``margin`` away from zero; biases left as they are.

    The sign methods read ``sign(W)`` at every step, a function that jumps at zero: an
    entry that crosses zero during training can flip its sign in one run and not in
    the other, from float32 noise alone, and the runs then part by a whole step (seen
    once on another machine: frSF ended 1.9e-3 from one device, never here). Adam
    moves an entry by about the learning rate (1e-3) per step; four steps stay within
    the margin, so no entry crosses zero and the comparison is one of float noise.
    """
    return [w + np.sign(w) * margin if w.ndim > 1 else w for w in weights]
