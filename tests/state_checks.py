"""Checks shared by the tests of methods that carry state (synthesizers, recurrent state)."""
import keras


def untracked_state(method):
    """Attributes of ``method`` (not its state or model) that hold Keras variables,
    layers or optimizers: state Keras would not save. Should be empty."""
    kinds = (keras.Variable, keras.layers.Layer, keras.optimizers.Optimizer)

    def holds(value):
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, (list, tuple)):
            return any(holds(v) for v in value)
        return isinstance(value, kinds)

    return [k for k, v in vars(method).items() if k not in ("state", "model") and holds(v)]
