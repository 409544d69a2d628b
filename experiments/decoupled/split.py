"""A chain model cut into stages: its blocks, a balanced partition, the method per schedule.

A stage is a run of consecutive blocks (a weighted layer and the layers after it, as
``credit.summary`` lists them), so that every stage boundary is a block output: the
place where DFA and DNI put their feedback points.

Example:
    >>> model = build_mlp(width=64, depth=3, input_dim=20, classes=4, batch_norm=False)
    >>> split = split_model(model, 2)
    >>> [split.stage_layers(k) for k in range(2)]
    [('hidden_0', 'hidden_1'), ('hidden_2', 'output')]
    >>> method_config("dni", split, seed=0)["at"]
    [1]
"""

import dataclasses

import keras
import numpy as np

import credit
from credit import graph as graph_lib

#: The schedules of the decoupled runner and the credit method each trains with.
SCHEDULES = {
    "locked": "backprop",                    # forward through all stages, then backward
    "gpipe": "backprop",                     # the same with micro-batches, pipelined
    "dfa": "direct_feedback_alignment",      # a stage updates when e arrives
    "dni": "synthetic_gradients",            # a stage updates from its synthesizer
    "dgl": "local_losses",                   # a stage updates from its local head
}


def check_schedule(schedule, argument="schedule"):
    """Return ``schedule`` if it is one of :data:`SCHEDULES`; otherwise a ValueError that
    names the argument, the value and the valid names."""
    if schedule not in SCHEDULES:
        raise ValueError(
            f"{argument}={schedule!r} is not a schedule of the decoupled runner; choose "
            f"one of {', '.join(map(repr, SCHEDULES))} (locked and gpipe train with "
            "backprop, dfa with direct feedback alignment, dni with synthetic gradients, "
            "dgl with local losses).")
    return schedule


def build_mlp(width=1024, depth=8, input_dim=784, classes=10, seed=0, activation="relu",
              batch_norm=True):
    """The wide MLP the experiment splits: ``depth`` hidden blocks of ``width`` units and
    a softmax output, with named layers (``hidden_i``, ``norm_i``, ``act_i``, ``output``)
    so that every process that rebuilds it finds the same layers.

    By default a block is Dense, BatchNormalization, ReLU, the blocks of Czarnecki et
    al. 2017's deep synthetic-gradient networks: on this deep, wide network without
    batch norm, DFA diverges with ReLU and DNI with tanh (Adam, learning rate 1e-3).

    Args:
        width, depth: hidden units per layer and hidden blocks.
        input_dim, classes: input features and output classes.
        seed: seed of the initial weights (``keras.utils.set_random_seed``).
        activation: of the hidden blocks.
        batch_norm: put a BatchNormalization between each hidden Dense layer and its
            activation (False: Dense layers with the activation inside). GPipe's
            micro-batches see their own batch statistics, so with batch norm GPipe is
            not exactly backprop on the whole batch (as in Huang et al. 2019).

    Returns:
        A built ``credit.Sequential``.

    Example:
        >>> build_mlp(width=8, depth=2, input_dim=5, classes=3, batch_norm=False).count_params()
        147
    """
    keras.utils.set_random_seed(int(seed))
    layers = [keras.Input((int(input_dim),))]
    for i in range(int(depth)):
        if batch_norm:
            layers += [keras.layers.Dense(int(width), name=f"hidden_{i}"),
                       keras.layers.BatchNormalization(name=f"norm_{i}"),
                       keras.layers.Activation(activation, name=f"act_{i}")]
        else:
            layers.append(keras.layers.Dense(int(width), activation=activation,
                                             name=f"hidden_{i}"))
    layers.append(keras.layers.Dense(int(classes), activation="softmax", name="output"))
    return credit.Sequential(layers, name="mlp")


@dataclasses.dataclass(frozen=True)
class Split:
    """A partition of a chain model's blocks into stages.

    Attributes:
        blocks: the layer names of each block, in order.
        ranges: per stage, ``(first block, last block + 1)``.
        costs: the cost of each block the partition balanced (parameters by default).
    """

    blocks: tuple
    ranges: tuple
    costs: tuple

    @property
    def stages(self):
        """Number of stages."""
        return len(self.ranges)

    def stage_layers(self, k):
        """The layer names of stage ``k``, in order."""
        start, end = self.ranges[k]
        return tuple(name for block in self.blocks[start:end] for name in block)

    @property
    def boundaries(self):
        """Block index of the last block of every stage but the last: where a stage hands
        its output on (DNI's synthesizers sit there)."""
        return tuple(end - 1 for _, end in self.ranges[:-1])

    def stage_costs(self):
        """The summed block cost of each stage."""
        return tuple(float(sum(self.costs[s:e])) for s, e in self.ranges)


def chain_blocks(model):
    """The model's blocks as tuples of layer names, checked to form one chain.

    Raises:
        ValueError: the model branches or merges (a stage split needs a chain).
    """
    spec = tf_spec(model)
    graph = graph_lib.analyse(model, spec)
    if not graph.is_chain():
        raise ValueError(
            f"model {model.name!r} is not a chain of blocks (it branches or merges); the "
            "decoupled runner cuts a chain into stages. Use a Sequential stack of "
            "blocks, e.g. experiments.decoupled.build_mlp().")
    return tuple(tuple(layer.name for layer in block.layers) for block in graph.blocks)


def tf_spec(model):
    """The ``tf.TensorSpec`` of a batch of ``model``'s (single) input."""
    import tensorflow as tf

    return tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), model.inputs[0].dtype)


def partition(costs, stages, argument="stages"):
    """Contiguous groups of blocks, ``stages`` of them, that minimise the largest group's
    summed cost (the pipeline's bottleneck).

    Args:
        costs: one non-negative number per block.
        stages: the number of groups, 1 to ``len(costs)``.
        argument: the name to use in error messages.

    Returns:
        A tuple of ``(start, end)`` block ranges.

    Example:
        >>> partition([1, 1, 1, 1], 2)
        ((0, 2), (2, 4))
        >>> partition([4, 1, 1, 1, 1], 2)
        ((0, 1), (1, 5))
    """
    n = len(costs)
    if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or stages < 1:
        raise ValueError(f"{argument}={stages!r}: the number of stages must be an integer "
                         f">= 1; pass for example {argument}=2.")
    if stages > n:
        raise ValueError(
            f"{argument}={stages} is larger than the model's {n} blocks (a weighted layer "
            f"and the layers after it); each stage needs at least one block. Pass "
            f"{argument} <= {n}, or a deeper model.")
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(costs, dtype=float))])
    # best[k][i]: the smallest bottleneck of the first i blocks in k groups.
    best = np.full((stages + 1, n + 1), np.inf)
    cut = np.zeros((stages + 1, n + 1), dtype=int)
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i] - 1e-12:
                    best[k][i], cut[k][i] = value, j
    ranges, i = [], n
    for k in range(stages, 0, -1):
        j = cut[k][i]
        ranges.append((int(j), int(i)))
        i = j
    return tuple(reversed(ranges))


def split_model(model, stages, costs=None):
    """Cut a chain model into ``stages`` stages of whole blocks, balanced by cost.

    Args:
        model: a built Keras model whose blocks form a chain.
        stages: the number of stages K.
        costs: one cost per block (default: its parameter count, proportional to its
            multiply-adds in an MLP).

    Returns:
        A :class:`Split`.

    Raises:
        ValueError: K is not between 1 and the number of blocks, or the model is not a
            chain. The message names the argument, the value and the fix.

    Example:
        >>> split = split_model(build_mlp(width=32, depth=8, input_dim=10), 4)
        >>> split.ranges, split.boundaries
        (((0, 2), (2, 4), (4, 6), (6, 9)), (1, 3, 5))
    """
    blocks = chain_blocks(model)
    if costs is None:
        costs = [float(sum(model.get_layer(name).count_params() for name in block))
                 for block in blocks]
    if len(costs) != len(blocks):
        raise ValueError(f"costs has {len(costs)} entries; the model has {len(blocks)} "
                         "blocks: give one cost per block.")
    return Split(blocks, partition(costs, stages), tuple(float(c) for c in costs))


def method_config(schedule, split, seed=0, conditioned=False, synthesizer="linear",
                  synthesizer_learning_rate=None):
    """The credit method a schedule trains with, as a config for ``credit.get``.

    ``locked`` and ``gpipe``: backprop. ``dfa``: direct feedback alignment with a point at
    every hidden block (its default). ``dni``: synthetic gradients with one synthesizer
    at each stage boundary (``at`` = the boundary blocks), bootstrapped targets; inside a
    stage the signal flows by true backprop. ``dgl``: local losses (decoupled greedy
    learning, Belilovsky et al. 2020) with an auxiliary head at each stage boundary,
    the method's default loss and head; inside a stage true backprop, nothing crosses
    a boundary.

    Raises:
        ValueError: an unknown schedule, or ``dni``/``dgl`` with one stage (no
            boundary).

    Example:
        >>> split = split_model(build_mlp(width=32, depth=3, input_dim=10), 2)
        >>> method_config("dfa", split, seed=1)
        {'name': 'direct_feedback_alignment', 'seed': 1}
    """
    check_schedule(schedule)
    name = SCHEDULES[schedule]
    if name == "backprop":
        return {"name": "backprop"}
    if name == "direct_feedback_alignment":
        return {"name": name, "seed": int(seed)}
    if split.stages < 2:
        what = "synthesizers" if schedule == "dni" else "local heads"
        raise ValueError(
            f"schedule={schedule!r} needs stages >= 2: its {what} sit between stages; got "
            "stages=1. Use schedule='locked' for one stage, or stages=2.")
    if name == "local_losses":
        return {"name": name, "seed": int(seed), "at": list(split.boundaries)}
    config = {"name": name, "seed": int(seed), "at": list(split.boundaries),
              "conditioned": bool(conditioned), "synthesizer": synthesizer,
              "target": "bootstrap"}
    if synthesizer_learning_rate is not None:
        config["learning_rate"] = float(synthesizer_learning_rate)
    return config
