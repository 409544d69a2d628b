"""The model's own graph: its layers, how they connect, its blocks, and the step's hooks.

credit never re-implements a model's forward pass. To learn a model's structure it runs
the model once, symbolically (:func:`analyse`), with a recording wrapper on each layer's
``call``: every layer call, what it consumed and what it produced. That works for
Sequential, functional, subclassed and nested models alike, and for any Python between
the layers.

From the record it derives:

- **units**: the layers whose calls make up the graph. Leaf layers, and layers whose
  inside credit does not take apart: recurrent layers (backpropagated through time
  inside) and attention layers (their projections still get transports).
- **blocks**: a weighted unit and the parameter-free or normalisation units after it on a
  single path, up to a branch, a merge or the next weighted unit. A block's last layer is
  where its feedback point goes (``at="blocks"``).
- **residuals**: additions of paths that split earlier (a skip path), and where the
  stream leaves each: the default feedback points go there, not on the blocks of the
  residual branches (:meth:`Graph.stream_points`).
- **connectivity** between feedback points: which points feed which, and which reach the
  model output without crossing another point.

During a training step, :class:`Hooks` swaps the ``call`` (and ``activation``) of the
layers a method acts on for wrappers on the instances, and restores them afterwards.
The wrappers do nothing unless the current thread has an active recorder, so concurrent
replicas (``tf.distribute``) and other uses of the same layers are not disturbed.
"""

import threading
import warnings
from collections import Counter

import keras

from credit._tensorflow import tf
from credit import _keras_compat as compat
from credit import recurrent_transports, transports

_L = keras.layers
#: Layers with weights whose inside credit does not take apart into blocks.
COMPOSITE = tuple(t for t in (_L.RNN, _L.Bidirectional, _L.MultiHeadAttention,
                              getattr(_L, "GroupedQueryAttention", None)) if t is not None)
RECURRENT = (_L.RNN, _L.Bidirectional)
#: Attention layers: a residual with one on its branch and the residual after it make
#: one transformer block (one point by default).
ATTENTION = tuple(t for t in (_L.MultiHeadAttention, getattr(_L, "GroupedQueryAttention", None),
                              _L.Attention, _L.AdditiveAttention) if t is not None)
#: Layers with weights that join the block before them instead of starting one.
NORMALIZATION = tuple(t for t in (_L.BatchNormalization, _L.LayerNormalization,
                                  _L.GroupNormalization, _L.UnitNormalization,
                                  getattr(_L, "RMSNormalization", None)) if t is not None)
# Ops through which no gradient flows: they do not connect layers for credit assignment.
_NO_GRADIENT_OPS = {"Shape", "ShapeN", "Size", "Rank", "StopGradient", "PreventGradient",
                    "ZerosLike", "OnesLike", "VarHandleOp", "ReadVariableOp",
                    "BroadcastGradientArgs"}


class _Layers(dict):
    """Layers by name; a point name ``"name:k"`` (a call of a layer called several
    times) finds its layer too."""

    def __missing__(self, key):
        if isinstance(key, str) and ":" in key:
            name, _, k = key.rpartition(":")
            if k.isdigit() and name in self:
                return self[name]
        raise KeyError(key)


class GraphError(ValueError):
    """A model, a point or a transport that credit cannot handle; the message says why."""


# --------------------------------------------------------------------------------------
# The structure of a model


class Node:
    """One call of a layer in the model's forward pass.

    Attributes:
        index: position in call order (topological for units).
        layer: the Keras layer.
        unit: True for units, False for containers (layers made of units).
        upstream: indices of the unit nodes whose outputs this call consumes (through
            any ops in between).
        from_input: whether it also consumes the model input directly.
        inputs: the number of tensor inputs of the call.
        output_shape: shape of its output without the batch axis (None if several).
        call: which call of its layer this is (0 for the first).
        point: the name of a feedback point on this call's output: the layer's name
            for a layer called once, ``"name:k"`` for the k-th call of a layer called
            several times (a shared encoder, a layer inside TimeDistributed).
    """

    def __init__(self, index, layer, unit, inputs, output, output_shape):
        self.index = index
        self.layer = layer
        self.unit = unit
        self.input_tensors = inputs
        self.output_tensor = output
        self.inputs = len(inputs)
        self.output_shape = output_shape
        self.upstream = set()
        self.from_input = False
        self.call = 0
        self.point = layer.name
        self.in_loop = False

    def __repr__(self):
        return f"Node({self.index}: {self.point})"


class Block:
    """A weighted unit and the units that follow it on a single path.

    Attributes:
        index: position among the model's blocks (topological).
        layers: the block's layers in order; ``layers[0]`` is the weighted one.
        point: where the block's feedback point goes: the name of the block's last
            layer (``"name:k"`` for the k-th call of a layer called several times).
        output_shape: shape of the block's output without the batch axis.
        is_output: whether the block's output reaches the model output through
            parameter-free layers only (such blocks get the loss's own gradient).
    """

    def __init__(self, index, nodes):
        self.index = index
        self.nodes = list(nodes)
        self.is_output = False

    @property
    def layers(self):
        return tuple(n.layer for n in self.nodes)

    @property
    def head(self):
        return self.nodes[0].layer

    @property
    def point(self):
        return self.nodes[-1].point

    @property
    def output_shape(self):
        return self.nodes[-1].output_shape

    @property
    def units(self):
        """Number of values in the block's output per example."""
        return size_of(self.output_shape)

    def __repr__(self):
        return f"Block({self.index}: {', '.join(l.name for l in self.layers)})"


class Residual:
    """A residual merge: an addition of paths that split earlier (one of them a skip).

    Found from the graph, not from layer names: an ``Add`` or ``Average`` layer, or an
    addition op between layers (``x + f(x)`` in a ``call`` or a functional model),
    whose inputs share an ancestor (a unit or the model input).

    Attributes:
        merge: the name of the merging layer, or of the addition op's output tensor.
        region: indices of the unit calls on the merged paths after they split (the
            residual branch, and a projection shortcut if there is one).
        exit: the call where the stream leaves the residual block: the merge layer, or
            the layer that an addition op feeds, followed through the normalisation,
            activation and dropout layers after it on a single path. None when no
            layer's output is the stream (an addition op whose result several layers
            read, as in a pre-norm block written ``x = x + f(norm(x))``).
        attention: whether an attention layer is on the branch.
    """

    def __init__(self, merge, region, exit):
        self.merge = merge
        self.region = frozenset(region)
        self.exit = exit
        self.skips = []  # per merge input, the units (and model inputs) right behind it
        self.attention = False  # whether an attention layer is on its branch

    def continues(self, other):
        """Whether this residual's skip starts where ``other``'s stream leaves."""
        return other.exit is not None and any(
            s == {other.exit.index} for s in self.skips)

    @property
    def point(self):
        """The point on the stream after this block (a layer name), or None."""
        return None if self.exit is None else self.exit.point

    def __repr__(self):
        return f"Residual({self.merge} -> {self.point})"


class Graph:
    """What :func:`analyse` learns of a model. Read-only.

    Attributes:
        model: the model.
        nodes: every recorded layer call (units and containers), in call order.
        blocks: the model's blocks, in topological order.
        residuals: the model's residual merges (:class:`Residual`), in call order:
            where :meth:`stream_points` puts the default points.
        layers: dict from name to layer, for every layer of the model (recursively).
        transportable: names of the layers a transport can cross (Dense, Conv, ...),
            outside recurrent layers.
        weighted: names of the layers that have weights (units, composites, the
            sublayers of attention layers, normalisation layers).
        output_shapes: shapes of the model outputs without the batch axis.
        output_logits: one ``(kind, where)`` per model output (in the order of
            ``tf.nest.flatten`` of the outputs): where that output's error is read,
            looking through parameter-free shape layers and ops (Reshape, Flatten,
            Permute, Identity) after its softmax/sigmoid. ``kind`` is ``"activation"``
            (the input of layer ``where``'s softmax/sigmoid activation), ``"input"``
            (the input of a softmax/sigmoid layer ``where``), ``"output_of"`` (the
            output of layer ``where``, which a softmax/sigmoid op in a ``call``
            reads), ``"returned"`` (the logits of the softmax/sigmoid op that ends
            layer ``where``'s call), ``"keras_logits"`` (the logits of the
            softmax/sigmoid op that ends the model's call), ``"output"`` (the model
            output itself; ``where`` is None) or ``"unreachable"`` (``where`` says
            why: the logits are an intermediate of a call that credit cannot read).
        output_names: the model outputs' names (for messages).
        output_squashing: per model output, ``"softmax"``, ``"sigmoid"`` or None: the
            function between its logits and the output.
        logits: ``output_logits[0]`` for a model with one output, else
            ``("output", None)``.
    """

    def __init__(self, model, nodes, inputs, outputs, layers, inner, names=None):
        self.model = model
        # id(layer) -> the name credit knows it by (see unique_names).
        self._names = names if names is not None else unique_names(model)
        self.nodes = nodes
        self._inputs = inputs
        self._outputs = outputs
        self.layers = _Layers(layers)
        self._inner = inner  # layers inside composites, by name
        self.output_shapes = [_shape(t) for t in outputs]
        names = list(getattr(model, "output_names", None) or [])
        self.output_names = (names if len(names) == len(outputs)
                             else [f"output {j}" for j in range(len(outputs))])
        self.blocks = []
        self.logits = ("output", None)
        self.output_logits = []
        self._calls = {}
        for node in nodes:
            self._calls.setdefault(self.name_of(node.layer), []).append(node)
        self._points = {}  # point name -> node
        for name, calls in self._calls.items():
            for k, node in enumerate(calls):
                node.call = k
                node.point = name if len(calls) == 1 else f"{name}:{k}"
                self._points[node.point] = node
        self._producer = {}  # tensor name -> node index (unit outputs)
        self._memo = {}
        for node in nodes:
            if node.unit:
                for t in _flatten(node.output_tensor):
                    self._producer[t.name] = node.index
        self._connect_units()
        self._cut_blocks()
        self._find_residuals()
        self._find_logits()

    # -- public queries ----------------------------------------------------------------

    @property
    def units(self):
        return [n for n in self.nodes if n.unit]

    @property
    def transportable(self):
        names = [name for name, layer in self.layers.items() if transports.supports(layer)
                 and not self._inside_recurrent(layer)]
        return [n for n in names if n in self._calls or n in self._inner]

    @property
    def weighted(self):
        """Names of the layers that own weights, in the model's layer order.

        A recurrent layer owns its cell's weights; any other layer owns the weights that
        none of its sublayers holds (so MultiHeadAttention's are its projections').
        """
        names = []
        for name, layer in self.layers.items():
            if isinstance(layer, RECURRENT):
                if layer.weights:
                    names.append(name)
            elif not self._inside_recurrent(layer) and _own_weights(layer):
                names.append(name)
        return names

    @property
    def hidden_blocks(self):
        """The blocks that are not output blocks: where ``at="blocks"`` puts points."""
        return [b for b in self.blocks if not b.is_output]

    def name_of(self, layer):
        """The name credit knows ``layer`` by: its own name, or, where several layers of
        the model share it (the ``query`` of two MultiHeadAttention layers), the name
        qualified by the layers that hold it (``multi_head_attention_1/query``)."""
        return self._names.get(id(layer), layer.name)

    def needs_input_gradient(self, name):
        """Whether anything trainable lies below layer ``name`` (else its input gradient
        is never used, and a transport on it would be wasted)."""
        nodes = self._calls.get(name)
        if nodes:
            return any(n.upstream for n in nodes)
        for node in self.nodes:  # a layer inside a composite: ask about the composite
            if node.unit and isinstance(node.layer, COMPOSITE) and any(
                    self.name_of(l) == name
                    for l in compat.sublayers(node.layer, recursive=True)):
                return bool(node.upstream)
        return True

    def calls(self, name):
        """How many times layer ``name`` is called in one forward pass."""
        return len(self._calls.get(name, []))

    def node(self, name):
        """The call that point ``name`` sits on: the one call of layer ``name``, or the
        k-th call of a layer called several times for ``"name:k"`` (an error if the
        layer is never called, or called several times and ``name`` has no ``:k``)."""
        if name in self._points:
            return self._points[name]
        if name not in self.layers:
            shared = sorted(n for n in self.layers if n.rpartition("/")[2] == name)
            if shared:
                raise GraphError(
                    f"model {self.model.name!r} has {len(shared)} layers named {name!r}, "
                    f"inside other layers; name the one you mean: {', '.join(shared)}.")
            raise GraphError(
                f"model {self.model.name!r} has no layer named {name!r}. Its layers: "
                f"{', '.join(sorted(self.layers))}.")
        nodes = self._calls.get(name, [])
        if len(nodes) != 1:
            where = ("inside a recurrent layer" if self._inside_recurrent(self.layers[name])
                     else "inside another layer that credit does not take apart"
                     if name in self._inner else "")
            if len(nodes) > 1:
                raise GraphError(
                    f"layer {name!r} is called {len(nodes)} times in one forward pass; a "
                    f"feedback point sits on one call: name it {name + ':0'!r} ... "
                    f"{name + ':' + str(len(nodes) - 1)!r}.")
            raise GraphError(
                f"layer {name!r} is called {len(nodes)} times in one forward pass"
                f"{' (' + where + ')' if where else ''}; a feedback point needs a layer "
                "called at least once, with one output tensor. Choose another layer.")
        return nodes[0]

    def point_layer(self, name):
        """The layer that point ``name`` (a layer name or ``"name:k"``) sits on."""
        return self.node(name).layer

    def points_of(self, name):
        """The point names of layer ``name``'s calls: ``[name]`` for a layer called once,
        ``["name:0", "name:1", ...]`` for one called several times."""
        return [n.point for n in self._calls.get(name, [])]

    def block_of(self, name):
        """The block that holds layer ``name`` (or ends at point ``name``), or None."""
        for block in self.blocks:
            if block.point == name:
                return block
        for block in self.blocks:
            if any(self.name_of(layer) == name for layer in block.layers):
                return block
        return None

    def point_units(self, name):
        """Values per example at point ``name``'s output."""
        return size_of(self.point_shape(name))

    def point_shape(self, name):
        node = self.node(name)
        if node.in_loop:
            raise GraphError(
                f"layer {node.layer.name!r} runs inside a loop of another layer's call (a "
                "TimeDistributed over a time axis of unknown length, say); credit cannot "
                "put a feedback point there. Give the input a fixed length (keras.Input("
                "shape=(T, ...))) so that each step is a call of its own, or choose "
                "another point.")
        if node.output_shape is None:
            raise GraphError(f"layer {name!r} returns several tensors; a feedback point "
                             "needs a layer with one output tensor.")
        return node.output_shape

    def is_output(self, name):
        """Whether layer ``name``'s output is itself a model output."""
        node = self.node(name)
        outs = {t.name for t in self._outputs}
        return any(t.name in outs for t in _flatten(node.output_tensor))

    def output_indices(self, name):
        """The indices of the model outputs that are layer ``name``'s output."""
        produced = {t.name for t in _flatten(self.node(name).output_tensor)}
        return [j for j, t in enumerate(self._outputs) if t.name in produced]

    def resolve_points(self, points, argument="points"):
        """Names from layer names and block indices (negative ones count from the end)."""
        names = []
        for p in points:
            if isinstance(p, str):
                name = p
            elif isinstance(p, int) and not isinstance(p, bool):
                n = len(self.blocks)
                if not -n <= p < n:
                    raise GraphError(
                        f"{argument}={list(points)!r} names block {p}, but model "
                        f"{self.model.name!r} has {n} blocks (indices 0..{n - 1}, or "
                        f"-{n}..-1): {self.blocks}.")
                name = self.blocks[p].point
            else:
                raise GraphError(f"{argument} must hold layer names or block indices; got "
                                 f"{p!r} of type {type(p).__name__}.")
            # A layer called several times: a point on each of its calls.
            expanded = (self.points_of(name) if name not in self._points
                        and self.calls(name) > 1 else [name])
            for name in expanded:
                self.point_shape(name)  # checks the name, the number of calls, one output
                if name in names:
                    raise GraphError(f"{argument}={list(points)!r} names point {name!r} "
                                     "twice (a layer name and a block index can name the "
                                     "same point); name each point once.")
                names.append(name)
        return self.order(names)

    def order(self, names):
        """``names`` sorted in call order."""
        return sorted(names, key=lambda n: self.node(n).index)

    def connect(self, points):
        """Connectivity of the feedback points ``points`` (layer names).

        Returns a dict with ``below`` and ``above`` (point -> points directly below /
        above it, i.e. connected without crossing another point) and ``to_output`` (the
        points connected to a model output without crossing another point).
        """
        outputs_of = {}
        for p in points:
            for t in _flatten(self.node(p).output_tensor):
                outputs_of[t.name] = p
        below = {}
        for p in points:
            # The point's own call may itself contain another point (a container point
            # around a unit point): search from the call's inputs.
            hits, _ = _walk(self.node(p).input_tensors,
                            lambda t, p=p: outputs_of.get(t.name, p) != p)
            below[p] = self.order({outputs_of[t.name] for t in hits})
        above = {p: [q for q in points if p in below[q]] for p in points}
        hits, _ = _walk(self._outputs, lambda t: t.name in outputs_of)
        to_output = {outputs_of[t.name] for t in hits}
        return {"below": below, "above": above, "to_output": self.order(to_output)}

    def owner_node(self, name):
        """The call that runs layer ``name``: its own, or its composite's (attention)."""
        nodes = self._calls.get(name)
        if nodes:
            return nodes[0]
        for node in self.nodes:
            if node.unit and isinstance(node.layer, COMPOSITE) and any(
                    self.name_of(l) == name
                    for l in compat.sublayers(node.layer, recursive=True)):
                return node
        return None

    def reaches(self, name, points):
        """Where the backward signal of layer ``name``'s output comes from.

        Returns ``(points, loss)``: the feedback points among ``points`` that its output
        reaches without crossing another point, and whether it reaches the model output
        that way. A point's own layer is fed by its own point alone; a layer called
        several times is fed, at each call, by that call's point or by what that call's
        output reaches.
        """
        own = [p for p in points if p in self._points and self.name_of(self._points[p].layer) == name]
        nodes = self._calls.get(name)
        if not nodes:
            node = self.owner_node(name)
            if node is None:
                return [], False
            outer = [p for p in points if self._points.get(p) is node]
            if outer:  # inside a composite that carries a point
                return outer, False
            nodes = [node]
        point_out = {}
        for p in points:
            for t in _flatten(self.node(p).output_tensor):
                point_out[t.name] = p
        outputs = {t.name for t in self._outputs}
        found, loss = set(own), False
        for node in nodes:
            if node.point in points:
                continue  # this call is fed by its own point
            start = {t.name for t in _flatten(node.output_tensor)}
            hits, seen = _walk(_flatten(node.output_tensor),
                               lambda t: t.name in point_out and t.name not in start,
                               forward=True)
            found.update(point_out[t.name] for t in hits)
            stopped = {t.name for t in hits}
            loss = loss or any(n in outputs for n in seen if n not in stopped)
            # A container point around this call (its output is the container's).
            found.update(point_out[t] for t in start if t in point_out)
        return self.order(found), loss

    def stream_points(self, joined=True):
        """The default points: on the residual stream, and on blocks outside residuals.

        One point where the stream leaves each residual block (:attr:`residuals`,
        after the merge and the normalisation or activation that follows it), none on
        the blocks inside a residual block's branches (they learn from the point above
        them through their own true gradient), and one on every other hidden block (a
        plain chain keeps a point per block; so do a ResNet's stem and the layers
        between stages).

        With ``joined``, a transformer block is one residual block: a residual with
        attention on its branch whose stream goes straight into the next residual
        (the feed-forward sublayer, or a decoder's cross-attention) gets no point of
        its own, so a transformer block has one point, after its last merge and
        normalisation, as in LightOn's DFA transformers (their "macro" placement).

        A residual whose stream is no layer's output keeps the points of its branch
        blocks, with a warning. Points that would sit where the output is reached
        through parameter-free layers are left out: the loss's own gradient arrives
        there.
        """
        inside, orphans = set(), []
        for r in self.residuals:
            if r.exit is not None:
                inside |= r.region
            else:
                orphans.append(r)
        points = [b.point for b in self.hidden_blocks
                  if not any(n.index in inside for n in b.nodes)]
        for r in self.residuals:
            if r.exit is None or r.exit.index in self._output_side:
                continue
            if joined and r.attention and any(
                    q.exit is not None and q.continues(r) for q in self.residuals):
                continue  # one point per transformer block, after its last sublayer
            points.append(r.point)
        kept = [r for r in orphans
                if any(not b.is_output and b.nodes[0].index in r.region
                       and b.nodes[0].index not in inside for b in self.blocks)]
        if kept:
            warnings.warn(
                f"model {self.model.name!r}: the residual addition(s) "
                f"{', '.join(r.merge for r in kept)} are no layer's output, so no feedback "
                "point can sit on the stream there; the blocks on their branches keep "
                "points of their own. Merge with keras.layers.Add() (or put a layer on "
                "the sum) to have a point on the stream, or name the points with at=[...].",
                stacklevel=3)
        return self.order(dict.fromkeys(points))

    def points(self, placement="stream"):
        """The points of a named placement (see ``at=`` of the point methods).

        ``"stream"``: :meth:`stream_points`, one point per residual block (a
        transformer block counting as one); ``"residuals"``: one point after every
        residual merge (a transformer block's attention and feed-forward sublayers
        each get one); ``"blocks"``: every hidden block's output, residual branches
        included.
        """
        if placement == "blocks":
            return self.order([block.point for block in self.hidden_blocks])
        if placement == "stream":
            return self.stream_points()
        if placement == "residuals":
            return self.stream_points(joined=False)
        raise GraphError(f"placement must be 'stream', 'residuals' or 'blocks'; got "
                         f"{placement!r}.")

    def is_chain(self):
        """Whether the blocks form one chain: each feeds only the next, no merges."""
        units = self.units
        block_of = {n.index: b.index for b in self.blocks for n in b.nodes}
        for node in units:
            if node.index not in block_of:
                return False
            if len(node.upstream) > 1 or node.inputs != 1:
                return False
        for b, nxt in zip(self.blocks, self.blocks[1:]):
            if nxt.nodes[0].upstream != {b.nodes[-1].index}:
                return False
        return not self.blocks[0].nodes[0].upstream if self.blocks else False

    def __repr__(self):
        return f"Graph({self.model.name}: {len(self.units)} units, {self.blocks})"

    # -- analysis ----------------------------------------------------------------------

    def _inside_recurrent(self, layer):
        return self._inner.get(self.name_of(layer)) == "recurrent"

    def _producers(self, tensor):
        """(unit node indices, reaches the model input) behind ``tensor``."""
        key = tensor.name
        if key not in self._memo:
            hits, _ = _walk([tensor], lambda t: t.name in self._producer
                            or t.name in self._inputs)
            nodes = frozenset(self._producer[t.name] for t in hits
                              if t.name in self._producer)
            from_input = any(t.name not in self._producer for t in hits)
            self._memo[key] = (nodes, from_input)
        return self._memo[key]

    def _connect_units(self):
        for node in self.nodes:
            if not node.unit:
                continue
            for t in node.input_tensors:
                nodes, from_input = self._producers(t)
                node.upstream |= set(nodes)
                node.from_input |= from_input
        self._consumers = {n.index: [] for n in self.nodes if n.unit}
        for node in self.nodes:
            if node.unit:
                for u in node.upstream:
                    self._consumers[u].append(node.index)
        self._output_producers = set()
        for t in self._outputs:
            nodes, _ = self._producers(t)
            self._output_producers |= set(nodes)

    def _weighted_unit(self, layer):
        if isinstance(layer, NORMALIZATION):
            return False
        return (transports.supports(layer) or isinstance(layer, COMPOSITE + (_L.Embedding,))
                or bool(layer.trainable_weights))

    def _cut_blocks(self):
        by_index = {n.index: n for n in self.nodes}
        block_of = {}
        blocks = []
        for node in self.units:
            if self._weighted_unit(node.layer):
                block = Block(len(blocks), [node])
                blocks.append(block)
                block_of[node.index] = block
                continue
            if len(node.upstream) != 1 or node.from_input or node.inputs != 1:
                continue
            (prev,) = node.upstream
            block = block_of.get(prev)
            if (block is None or block.nodes[-1].index != prev
                    or self._consumers[prev] != [node.index]
                    or prev in self._output_producers):
                continue
            block.nodes.append(node)
            block_of[node.index] = block
        # Output blocks: reached from the model output through parameter-free layers.
        stack, seen = list(self._output_producers), set()
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            if i in block_of:
                block_of[i].is_output = True
                continue
            stack.extend(by_index[i].upstream)
        self.blocks = blocks
        # Units outside blocks that reach the model output through such units only: a
        # point there would stand in for the loss's own gradient.
        self._output_side = {i for i in seen if i not in block_of}

    # Ops that add their inputs: a residual merge written as ``x + f(x)``.
    _ADD_OPS = ("AddV2", "Add", "AddN")

    def _find_residuals(self):
        """Fill :attr:`residuals`: the additive merges of paths that split earlier."""
        by_index = {n.index: n for n in self.nodes}

        def sources(tensor):  # the units and model inputs right behind ``tensor``
            hits, _ = _walk([tensor], lambda t: t.name in self._producer
                            or t.name in self._inputs)
            return {self._producer.get(t.name, t.name) for t in hits}

        # unit index -> itself and its ancestors: units, and model inputs by name
        ancestors = {}
        for node in self.units:
            a = {node.index}
            for t in node.input_tensors:
                for u in sources(t):
                    a |= ancestors.get(u, {u})
            ancestors[node.index] = a

        def reach(tensor):  # a merge input's units and inputs, and their ancestors
            a = set()
            for u in sources(tensor):
                a |= ancestors.get(u, {u})
            return a

        def residual(merge, inputs, start):
            sets = [reach(t) for t in inputs]
            if len(sets) < 2 or not set.intersection(*sets):
                return None  # no skip: the paths never split (a position table, say)
            region = {i for i in set.union(*sets) - set.intersection(*sets)
                      if isinstance(i, int)}
            if not region:
                return None  # the same tensor twice, or two outputs of one layer
            exit = None if start is None else self._follow_stream(start, by_index)
            r = Residual(merge, region, exit)
            r.skips = [frozenset(sources(t)) for t in inputs]
            r.attention = any(isinstance(by_index[i].layer, ATTENTION) for i in region)
            return r

        found = []
        for node in self.units:
            if isinstance(node.layer, (_L.Add, _L.Average)) and node.inputs > 1:
                r = residual(node.point, node.input_tensors, node)
                if r is not None:
                    found.append((node.index, r))
        # Additions between layers: which units (or the model output) read each sum.
        readers, sums = {}, {}
        for node in self.units:
            for t in self._between(node.input_tensors):
                if t.op.type in self._ADD_OPS:
                    readers.setdefault(t.name, set()).add(node.index)
                    sums[t.name] = t
        for t in self._between(self._outputs):
            if t.op.type in self._ADD_OPS:
                readers.setdefault(t.name, set()).add(None)
                sums[t.name] = t
        for name, t in sums.items():
            start = None
            if len(readers[name]) == 1 and None not in readers[name]:
                (i,) = readers[name]
                if by_index[i].inputs == 1 and isinstance(by_index[i].layer, _STREAM_LAYERS):
                    start = by_index[i]
            r = residual(name.split(":")[0], list(t.op.inputs), start)
            if r is not None:
                before = min(readers[name] - {None}, default=len(self.nodes))
                found.append((before - 0.5, r))
        self.residuals = [r for _, r in sorted(found, key=lambda x: x[0])]

    def _follow_stream(self, node, by_index):
        """From ``node``, on through the normalisation, activation and dropout layers
        that alone read its output: the call where the stream leaves."""
        while node.index not in self._output_producers:
            readers = self._consumers[node.index]
            if len(readers) != 1:
                break
            nxt = by_index[readers[0]]
            if (nxt.inputs != 1 or nxt.upstream != {node.index} or nxt.from_input
                    or not isinstance(nxt.layer, _STREAM_LAYERS)):
                break
            node = nxt
        return node

    def _between(self, tensors):
        """The tensors between layers behind ``tensors``: reached backwards through ops,
        not past a unit's output or a model input."""
        out, seen, stack = [], set(), list(tensors)
        while stack:
            t = stack.pop()
            if t.name in seen or t.name in self._producer or t.name in self._inputs:
                continue
            seen.add(t.name)
            out.append(t)
            if t.op.type not in _NO_GRADIENT_OPS:
                stack.extend(i for i in t.op.inputs if _differentiable(i))
        return out

    def _find_logits(self):
        self.output_squashing = []
        self.output_logits = [self._logits_of(t) for t in self._outputs]
        self.logits = self.output_logits[0] if len(self._outputs) == 1 else ("output", None)

    def _unit_producing(self, tensor, before=None):
        """The last unit call (before call ``before``) whose output is ``tensor`` itself,
        or None. (An Identity layer returns its input tensor: two calls produce it.)"""
        if before is None:
            i = self._producer.get(tensor.name)
            return None if i is None else self.nodes[i]
        for node in reversed(self.nodes[:before]):
            if node.unit and any(t.name == tensor.name
                                 for t in _flatten(node.output_tensor)):
                return node
        return None

    def _logits_of(self, tensor):
        """Where the error of the model output ``tensor`` is read (see ``output_logits``).

        Looks through parameter-free shape layers and ops after a final softmax or
        sigmoid (Reshape, Flatten, Permute, Identity, ...) to the softmax's input, and
        finds a softmax applied as a layer, as a layer's activation or as an op in a
        ``call``.
        """
        t, through, before = tensor, False, None
        while True:
            node = self._unit_producing(t, before)
            before = None
            op = t.op.type
            if node is not None:
                layer = node.layer
                if isinstance(layer, _L.Softmax):
                    self.output_squashing.append("softmax")
                    return ("input", self.name_of(layer))
                if isinstance(layer, _L.Activation) and _squashing(layer.activation):
                    self.output_squashing.append(layer.activation.__name__)
                    return ("input", self.name_of(layer))
                if _squashing(getattr(layer, "activation", None)):
                    self.output_squashing.append(layer.activation.__name__)
                    return ("activation", self.name_of(layer))
                if isinstance(layer, SHAPE_LAYERS) and node.inputs == 1:
                    t, through, before = node.input_tensors[0], True, node.index
                    continue
                if op in _SQUASHING_OPS:  # ops.softmax at the end of the layer's call
                    self.output_squashing.append(op.lower())
                    return ("returned", self.name_of(layer))
                self.output_squashing.append(None)
                return ("output", None)
            if op in _SQUASHING_OPS:  # ops.softmax in a call between the layers
                self.output_squashing.append(op.lower())
                below = self._unit_producing(t.op.inputs[0])
                if below is not None:
                    return ("output_of", self.name_of(below.layer))
                if not through:
                    return ("keras_logits", None)
                return ("unreachable", f"its {op.lower()} is applied to the result of "
                        f"ops ({t.op.inputs[0].op.type}) inside a call and followed by "
                        "shape ops, where credit cannot read the logits")
            if op in _SHAPE_OPS and t.op.inputs:
                t, through = t.op.inputs[0], True
                continue
            self.output_squashing.append(None)
            return ("output", None)


def _own_weights(layer):
    inner = {id(w) for sub in compat.sublayers(layer) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in inner]


#: Layers that the residual stream passes through after a merge on its way out of a
#: residual block: normalisation, activation, dropout and noise.
_STREAM_LAYERS = NORMALIZATION + (_L.Activation, _L.ReLU, _L.LeakyReLU, _L.ELU,
                                  _L.Dropout, _L.AlphaDropout, _L.GaussianDropout,
                                  _L.GaussianNoise, _L.SpatialDropout1D,
                                  _L.SpatialDropout2D, _L.SpatialDropout3D, _L.Identity)

#: Parameter-free layers that only move values around: an output's logits are looked
#: for behind them.
SHAPE_LAYERS = (_L.Reshape, _L.Flatten, _L.Permute, _L.Identity)
_SHAPE_OPS = {"Reshape", "Transpose", "Identity", "Squeeze", "ExpandDims"}
_SQUASHING_OPS = {"Softmax", "Sigmoid"}
# The kinds of ``output_logits`` read at a layer by the step's recorder.
_AT_LAYER = ("input", "activation", "output_of", "returned")


def _squashing(fn):
    return getattr(fn, "__name__", None) in ("softmax", "sigmoid")


def _walk(tensors, stop, forward=False):
    """The graph walk behind all of credit's connectivity questions.

    From ``tensors``, follows the ops a gradient flows through -- backwards to their
    inputs, or ``forward`` to their consumers' outputs -- and does not go past a tensor
    ``t`` for which ``stop(t)`` is true.

    Returns:
        ``(hits, seen)``: the tensors where it stopped, and the names of all the tensors
        it reached (those included).
    """
    hits, seen, stack = [], set(), list(tensors)
    while stack:
        t = stack.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        if stop(t):
            hits.append(t)
        elif forward:
            for op in t.consumers():
                if op.type not in _NO_GRADIENT_OPS:
                    stack.extend(op.outputs)
        elif t.op.type not in _NO_GRADIENT_OPS:
            stack.extend(i for i in t.op.inputs if _differentiable(i))
    return hits, seen


def _differentiable(t):
    # Variant tensors carry a recurrent layer's sequence through its While loop
    # (TensorList ops): a gradient flows through them, so the walk must too, or the
    # layers below a recurrent layer inside a block look disconnected from it.
    return (t.dtype.is_floating or t.dtype.is_complex or t.dtype.is_integer
            or getattr(t.dtype, "name", None) == "variant")


def _flatten(structure):
    """The tensors of a call's output structure: ``tf.nest.flatten`` on TensorFlow (its
    tensors), ``keras.tree.flatten`` elsewhere (the functional graph's, see
    ``credit.backends.keras_graph``)."""
    if keras.config.backend() == "tensorflow":
        return tf.nest.flatten(structure)
    return keras.tree.flatten(structure)


def _shape(t):
    if t.shape.rank is None:
        return None
    return tuple(t.shape[1:])


def size_of(shape):
    """Values per example in a tensor of ``shape`` (without the batch axis): the one size
    helper of credit's points, outputs and feedback matrices."""
    size = 1
    for d in shape or ():
        if d is None:
            raise GraphError(f"a feedback point's output shape {shape} has an unknown "
                             "dimension; credit needs fixed shapes (without the batch axis) "
                             "at feedback points. Fix the input length (keras.Input(shape=("
                             "T, ...))) or choose another point.")
        size *= int(d)
    return size


def unique_names(model):
    """A dict from ``id(layer)`` to a name unique among the layers ``model`` holds.

    A layer keeps its own name unless another layer of the model (at any depth) has the
    same one: Keras makes names unique only among a model's own layers, and the layers
    inside a custom layer or MultiHeadAttention (``query``, ``key``, ...) repeat in
    every instance. Those are qualified by the name of the layer that holds them
    (``multi_head_attention_1/query``), so that each gets its own point, transport and
    feedback matrix; credit keys all of them by name.
    """
    parents, order = {}, []

    def visit(layer, parent):
        for sub in compat.sublayers(layer):
            if isinstance(sub, _L.InputLayer) or id(sub) in parents:
                continue
            parents[id(sub)] = parent
            order.append(sub)
            visit(sub, sub)

    visit(model, None)
    counts = Counter(layer.name for layer in order)
    names, taken = {}, set()
    for layer in order:  # a layer's holder comes before it
        name = layer.name
        if counts[name] > 1:
            parent = parents[id(layer)]
            name = name if parent is None else f"{names[id(parent)]}/{name}"
        base, k = name, 1
        while name in taken:  # two layers of one holder share a name
            k += 1
            name = f"{base}#{k}"
        taken.add(name)
        names[id(layer)] = name
    return names


def walk(model, names=None):
    """The layers of ``model``: (units, containers, inner) with ``inner`` a dict from name
    (see :func:`unique_names`) to ``"recurrent"`` or ``"composite"`` for layers inside
    composites."""
    names = unique_names(model) if names is None else names
    units, containers, inner, seen = [], [], {}, set()

    def visit(layer):
        for sub in compat.sublayers(layer):
            if id(sub) in seen or isinstance(sub, _L.InputLayer):
                continue
            seen.add(id(sub))
            if isinstance(sub, COMPOSITE):
                units.append(sub)
                kind = "recurrent" if isinstance(sub, RECURRENT) else "composite"
                for deep in compat.sublayers(sub, recursive=True):
                    inner[names.get(id(deep), deep.name)] = kind
                    if kind == "composite":
                        inner_layers.append(deep)
            elif compat.sublayers(sub):
                containers.append(sub)
                visit(sub)
            else:
                units.append(sub)

    inner_layers = []
    visit(model)
    return units, containers, inner, inner_layers


def analyse(model, input_spec):
    """Run ``model`` once symbolically on ``input_spec`` and return its :class:`Graph`.

    Args:
        model: a built Keras model.
        input_spec: a ``tf.TensorSpec`` or a nested structure of them, batch axis None
            (None for an optional input the batches leave out).
    """
    names = unique_names(model)
    units, containers, inner, inner_layers = walk(model, names)
    records = []
    recorder = _ProbeRecorder(records, {id(l) for l in units})
    flat_spec = tf.nest.flatten(input_spec)
    captured = {}

    def forward(*flat):
        x = tf.nest.pack_sequence_as(input_spec, list(flat))
        captured["inputs"] = [t for t in flat if t is not None]  # optional inputs
        outputs = model(x, training=True)
        captured["outputs"] = [t for t in tf.nest.flatten(outputs) if t is not None]
        return captured["outputs"]

    with Hooks(units + containers, recorder):
        concrete = tf.function(forward, autograph=False).get_concrete_function(*flat_spec)
    outer = concrete.graph
    nodes = []
    for i, (layer, args, output) in enumerate(records):
        inputs = [t for t in tf.nest.flatten(args) if isinstance(t, tf.Tensor)]
        flat = tf.nest.flatten(output)
        shape = _shape(flat[0]) if len(flat) == 1 and isinstance(flat[0], tf.Tensor) else None
        nodes.append(Node(i, layer, id(layer) in recorder.units, inputs, output, shape))
        # A call traced inside a loop body: another graph (while_loop), or the
        # "loop_body" scope where vectorized_map traces (TimeDistributed over an
        # unknown number of steps).
        nodes[-1].in_loop = any(getattr(t, "graph", None) is not outer
                                or "loop_body" in t.name.split("/")
                                for t in flat if isinstance(t, tf.Tensor))
    layers = {}
    for layer in units + containers + inner_layers + [
            l for l in compat.sublayers(model, recursive=True)
            if not isinstance(l, _L.InputLayer)]:
        layers.setdefault(names.get(id(layer), layer.name), layer)
    return Graph(model, nodes, {t.name for t in captured["inputs"]}, captured["outputs"],
                 layers, inner, names)


# --------------------------------------------------------------------------------------
# Hooks

_local = threading.local()
_lock = threading.RLock()
_installed = {}  # id(layer) -> [count, layer, saved instance attributes]
_MISSING = object()


def _recorder():
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


def _call_wrapper(layer, original):
    def call(*args, **kwargs):
        recorder = _recorder()
        if recorder is None:
            return original(*args, **kwargs)
        return recorder.on_call(layer, original, args, kwargs)

    call.__wrapped__ = original
    return call


def _activation_wrapper(layer, original):
    def activation(a, *args, **kwargs):
        recorder = _recorder()
        if recorder is None:
            return original(a, *args, **kwargs)
        return recorder.on_activation(layer, lambda v: original(v, *args, **kwargs), a)

    activation.__name__ = getattr(original, "__name__", "activation")
    activation.__wrapped__ = original
    return activation


def _regularizer_wrapper(layer, original):
    def regularizer(output):
        on_regularizer = getattr(_recorder(), "on_regularizer", None)
        if on_regularizer is None:
            return original(output)
        return on_regularizer(layer, original, output)

    regularizer.__wrapped__ = original
    return regularizer


def _install(layer):
    entry = _installed.get(id(layer))
    if entry is None:
        saved = {name: layer.__dict__.get(name, _MISSING)
                 for name in ("call", "activation", "activity_regularizer")}
        object.__setattr__(layer, "call", _call_wrapper(layer, layer.call))
        # Only a plain attribute (recurrent layers expose their cell's as a property).
        if callable(layer.__dict__.get("activation")):
            object.__setattr__(layer, "activation",
                               _activation_wrapper(layer, layer.activation))
        # Keras applies the activity penalty to what ``call`` returns: at a feedback
        # point, the cut copy. The recorder moves it onto the layer's own output.
        if callable(layer.__dict__.get("activity_regularizer")):
            object.__setattr__(layer, "activity_regularizer",
                               _regularizer_wrapper(layer, layer.activity_regularizer))
        entry = _installed[id(layer)] = [0, layer, saved]
    entry[0] += 1


def _uninstall(layer):
    entry = _installed[id(layer)]
    entry[0] -= 1
    if entry[0]:
        return
    del _installed[id(layer)]
    for name, value in entry[2].items():
        if value is _MISSING:
            layer.__dict__.pop(name, None)
        else:
            object.__setattr__(layer, name, value)


class Hooks:
    """Context manager: wrap ``layers`` and make ``recorder`` this thread's recorder.

    Installation is counted per layer, so that nested or concurrent uses (replicas of a
    ``tf.distribute`` strategy tracing in threads) share the wrappers; the last one out
    restores the layers.
    """

    def __init__(self, layers, recorder):
        unique = {id(l): l for l in layers}
        self.layers = list(unique.values())
        self.recorder = recorder

    def __enter__(self):
        with _lock:
            for layer in self.layers:
                _install(layer)
        if not hasattr(_local, "stack"):
            _local.stack = []
        _local.stack.append(self.recorder)
        return self.recorder

    def __exit__(self, *exc):
        _local.stack.pop()
        with _lock:
            for layer in self.layers:
                _uninstall(layer)
        return False


class _ProbeRecorder:
    """Records every call of the hooked layers (for :func:`analyse`)."""

    def __init__(self, records, units):
        self.records = records
        self.units = units

    def on_call(self, layer, original, args, kwargs):
        output = original(*args, **kwargs)
        self.records.append((layer, (args, kwargs), output))
        return output

    def on_activation(self, layer, original, a):
        return original(a)


def gate(a, x, adjoint):
    """Identity on ``a``; its gradient goes to ``a`` unchanged and to ``x`` as ``adjoint(g)``.

    Put at a weighted layer's pre-activation ``a``, with the layer run on a stop-gradient
    copy of its input ``x``: the layer's weights get their true local gradient from
    ``a``, and ``x`` gets the transport's adjoint instead of the true input gradient.
    """

    @tf.custom_gradient
    def _gate(a, x):
        def grad(g):
            return g, adjoint(g)

        return tf.identity(a), grad

    return _gate(a, x)


class Records(dict):
    """What a method's ``intercept`` keeps during the forward pass (a dict), and the tape.

    A tensor an intercepted call creates from something the tape does not watch (the
    value of a non-trainable variable, such as a stateful RNN's carried state) has no
    gradient unless it is watched before it is used: :meth:`watch` does that on the
    step's tape.
    """

    def __init__(self, tape):
        super().__init__()
        self._tape = tape

    def watch(self, *tensors):
        """Watch ``tensors`` on the step's tape, so that gradients reach them."""
        for t in tensors:
            self._tape.watch(t)


class StepRecorder:
    """The recorder of one training step: applies transports, records and cuts points.

    Args:
        plan: the bound method's :class:`Plan`.
        transport: ``transport(layer, kernels) -> feedback kernels or None`` (the method's).
        tape: the step's tape (stop-gradient copies at points are watched on it).
        stop: cut the backward pass at points (False: only record their outputs).
        use_transports: apply the method's transports (False: true gradients).
        intercept: ``intercept(layer, call, args, kwargs, records)`` (the method's), run
            in place of the calls of the plan's intercepted layers; ``call`` runs the
            layer (with its transports and points), ``records`` is the trace's
            :class:`Records` dict.
    """

    def __init__(self, plan, transport, tape, stop=True, use_transports=True,
                 intercept=None):
        self.plan = plan
        self.transport = transport
        self.intercept = intercept
        self.tape = tape
        self.stop = stop
        self.use_transports = use_transports
        self.frames = {}
        self.outputs = {}
        self.stops = {}
        self.records = Records(tape)
        self.logits = {}  # layer name -> the tensor an output's error is read at
        self.calls = {}  # id(layer) -> calls so far in this forward pass (points)

    def on_call(self, layer, original, args, kwargs):
        if self.intercept is not None and id(layer) in self.plan.intercepted:
            def call(*a, **k):
                return self._call(layer, original, a, k)

            return self.intercept(layer, call, args, kwargs, self.records)
        return self._call(layer, original, args, kwargs)

    def _call(self, layer, original, args, kwargs):
        key = id(layer)
        plan = self.plan
        logits = plan.logits_layers.get(key)
        if logits is not None and logits[0] == "input":
            self.logits[logits[1]] = args[0]
        if self.use_transports and key in plan.transported:
            x = args[0]
            feedback = self.transport(layer, transports.kernels(layer))
            if feedback is None:
                output = original(*args, **kwargs)
            elif recurrent_transports.is_recurrent(layer):
                # Crossed at every step, inside the layer's own loop.
                with recurrent_transports.through_time(layer, feedback):
                    output = original(*args, **kwargs)
            else:
                frame = {"x": x, "feedback": tuple(feedback), "used": False}
                self.frames.setdefault(key, []).append(frame)
                try:
                    output = original(tf.stop_gradient(x), *args[1:], **kwargs)
                finally:
                    self.frames[key].pop()
                if not frame["used"]:  # a layer without an activation function
                    output = gate(output, x, _adjoint(layer, x, frame["feedback"]))
        else:
            output = original(*args, **kwargs)
        if key in plan.points:
            k = self.calls.get(key, 0)
            self.calls[key] = k + 1
            name = plan.points[key].get(k)
            if name is not None:
                output = self._point(layer, name, output)
        if logits is not None and logits[0] == "output_of":
            self.logits[logits[1]] = output
        elif logits is not None and logits[0] == "returned":
            self.logits[logits[1]] = compat.keras_logits(output)
        return output

    def on_regularizer(self, layer, original, output):
        """Keras's activity penalty of ``layer``, on its own output at a point.

        At a feedback point ``call`` returns the cut copy, which Keras hands to the
        activity regulariser: the penalty's gradient would stop there and be counted
        in what arrives at the point from above (twice for blockwise backprop). Taken
        on the layer's own output instead, it reaches the layer's weights, and the
        point's signal is what the layers above send, as without a regulariser.
        """
        for name in self.plan.points.get(id(layer), {}).values():
            if self.stops.get(name) is output:
                output = self.outputs[name]
                break
        return original(output)

    def on_activation(self, layer, original, a):
        key = id(layer)
        frames = self.frames.get(key)
        if frames and not frames[-1]["used"]:
            frame = frames[-1]
            frame["used"] = True
            a = gate(a, frame["x"], _adjoint(layer, frame["x"], frame["feedback"]))
        logits = self.plan.logits_layers.get(key)
        if logits is not None and logits[0] == "activation":
            self.logits[logits[1]] = a
        return original(a)

    def _point(self, layer, name, output):
        if name in self.outputs:
            raise GraphError(f"the feedback point at layer {name!r} was reached twice in one "
                             "forward pass; points need layers called once.")
        if not isinstance(output, tf.Tensor):
            raise GraphError(f"layer {name!r} returned {type(output).__name__}; a feedback "
                             "point needs a layer with one output tensor.")
        self.outputs[name] = output
        if not self.stop or name in self.plan.no_stop:
            self.stops[name] = None
            return output
        cut = tf.stop_gradient(output)
        compat.set_mask(cut, compat.get_mask(output))
        self.tape.watch(cut)
        self.stops[name] = cut
        return cut


def _adjoint(layer, x, feedback):
    return lambda g: transports.adjoint(layer, g, x, feedback)


class Plan:
    """What a bound method does to a model, resolved to layers: built by ``bind``.

    Attributes:
        graph: the model's :class:`Graph`.
        transported: dict from ``id(layer)`` to layer, the layers crossed by a transport.
        points: dict from ``id(layer)`` to ``{call index: point name}``.
        order: point names in topological order.
        below, above: point -> points directly below / above it.
        to_output: points connected to the model output without another point between.
        no_stop: points whose output is a model output (not cut inside the model; the
            loss reads a cut copy of that output).
        output_point: whether some point is a model output.
        output_points: dict from model output index to the point on that output.
        intercepted: dict from ``id(layer)`` to layer, the layers whose calls the method
            intercepts (e.g. a stateful RNN's, for synthetic gradients through time).
        logits_layers: dict from ``id(layer)`` to ``(kind, name)`` (see
            ``Graph.output_logits``), the layers where an output's error is read.
    """

    def __init__(self, graph, points, transported, intercepted=()):
        self.graph = graph
        layers = graph.layers
        self.intercepted = {id(layers[n]): layers[n] for n in intercepted}
        # id(layer) -> {call index: point name}: a layer called several times can carry
        # a point on each call.
        self.points = {}
        for p in points:
            node = graph.node(p)
            self.points.setdefault(id(node.layer), {})[node.call] = p
        self.order = tuple(graph.order(points)) if points else ()
        self.transported = {id(layers[t]): layers[t] for t in transported}
        connectivity = graph.connect(self.order) if points else {
            "below": {}, "above": {}, "to_output": []}
        self.below = connectivity["below"]
        self.above = connectivity["above"]
        self.to_output = tuple(connectivity["to_output"])
        self.no_stop = {p for p in self.order if graph.is_output(p)}
        self.output_point = bool(self.no_stop)
        # id(layer) -> (kind, name): the layers where an output's error is read.
        self.logits_layers = {id(layers[name]): (kind, name)
                              for kind, name in graph.output_logits if kind in _AT_LAYER}
        # Model output index -> the point on it: the loss reads a cut copy of that
        # output, so that the point's signal replaces its loss gradient and the other
        # outputs keep theirs.
        self.output_points = {}
        for p in self.no_stop:
            for j in graph.output_indices(p):
                self.output_points[j] = p
        self.hooked = (list(self.transported.values())
                       + [graph.point_layer(p) for p in self.order]
                       + list(self.intercepted.values())
                       + [layers[name] for _, name in self.logits_layers.values()])

    def recorder(self, transport, tape, stop=True, use_transports=True, intercept=None):
        return StepRecorder(self, transport, tape, stop, use_transports, intercept)
