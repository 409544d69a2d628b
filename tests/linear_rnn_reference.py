"""A linear SimpleRNN with a linear Dense read-out and an MSE loss, in numpy: the
reference of the synthetic-gradients-through-time tests.

``h_t = x_t K + h_{t-1} R + b`` (no activation), ``y_t = h_t V + c``, loss the mean
squared error over the window's batch, steps and outputs.
"""


def read_weights(model, rnn="rnn", out="out"):
    """``{"K", "R", "b", "V", "c"}`` of the model's layers, in float64."""
    K, R, b = (w.astype("float64") for w in model.get_layer(rnn).get_weights())
    V, c = (w.astype("float64") for w in model.get_layer(out).get_weights())
    return {"K": K, "R": R, "b": b, "V": V, "c": c}


def forward(w, xw, h):
    """The states ``[h_1, ..., h_T]`` of a window ``xw`` (batch, T, inputs) from ``h``."""
    hs = []
    for t in range(xw.shape[1]):
        h = xw[:, t] @ w["K"] + h @ w["R"] + w["b"]
        hs.append(h)
    return hs


def backward(w, xw, yw, h0, hs, injected, at_first_step=0.0):
    """Gradients of the window's MSE plus ``<h_T, injected>`` (plus
    ``<h_1, at_first_step>``): ``(dL/dh_0, {weight name: gradient})``."""
    T, V = xw.shape[1], w["V"]
    dy = [2 * (hs[t] @ V + w["c"] - yw[:, t]) / yw.size for t in range(T)]
    dh = dy[-1] @ V.T + injected
    grads = {"K": 0, "R": 0, "b": 0, "V": 0, "c": 0}
    for t in reversed(range(T)):
        if t == 0:
            dh = dh + at_first_step
        prev = hs[t - 1] if t else h0
        grads["K"] += xw[:, t].T @ dh
        grads["R"] += prev.T @ dh
        grads["b"] += dh.sum(0)
        grads["V"] += hs[t].T @ dy[t]
        grads["c"] += dy[t].sum(0)
        dh = dh @ w["R"].T + (dy[t - 1] @ V.T if t else 0)
    return dh, grads


