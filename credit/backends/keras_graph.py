"""A model's :class:`credit.graph.Graph`, read from Keras's own functional graph.

On TensorFlow, :func:`credit.graph.analyse` traces the model's call and reads the
TensorFlow graph. On a backend without such a graph (JAX), a functional or Sequential
model's structure is read from the graph Keras itself keeps: its layer calls and the
``KerasTensor`` s between them, which are the same on every backend. The ops between
layers in a functional model (``x + y``, ``keras.ops.softmax``) are Keras operations in
that graph, so residual merges written as additions and a final softmax op are found as
on TensorFlow.

The reader wraps each ``KerasTensor`` in a small object with the few attributes that
:class:`credit.graph.Graph`'s analysis reads of a TensorFlow tensor (``name``, ``op``
with ``type`` and ``inputs``, ``consumers()``, ``shape``, ``dtype``), so the analysis
(blocks, residuals, default points, logits) is the one TensorFlow uses. A subclassed
model has no such graph: it is refused, with the fix.

Example:
    >>> graph = credit.backends.keras_graph.analyse(model)     # doctest: +SKIP
    >>> graph.points("stream")
"""

import keras

from credit import _keras_compat as compat
from credit import graph as graph_lib


class _DType:
    """The dtype queries the analysis makes of a tensor's dtype."""

    def __init__(self, dtype):
        self.name = keras.backend.standardize_dtype(dtype)
        self.is_floating = "float" in self.name
        self.is_complex = "complex" in self.name
        self.is_integer = "int" in self.name

    def __eq__(self, other):
        return isinstance(other, _DType) and other.name == self.name

    def __hash__(self):
        return hash(self.name)


class _Shape(tuple):
    """A shape that also answers ``rank`` (as a TensorFlow shape does)."""

    @property
    def rank(self):
        return len(self)


class _Op:
    """What produced a tensor: a layer call, an op between layers, or a model input."""

    def __init__(self, type_, name, inputs):
        self.type = type_
        self.name = name
        self.inputs = inputs
        self.outputs = []


class _Tensor:
    """A ``KerasTensor`` of the functional graph, as the analysis reads a tensor."""

    def __init__(self, keras_tensor, name, op):
        self.keras_tensor = keras_tensor
        self.name = name
        self.op = op
        self.shape = _Shape(keras_tensor.shape)
        self.dtype = _DType(keras_tensor.dtype)
        self._consumers = []

    def consumers(self):
        return list(self._consumers)

    def __repr__(self):
        return f"<{self.name} {tuple(self.shape)} {self.dtype.name}>"


class _Reader:
    def __init__(self, units, containers):
        self.units = {id(layer) for layer in units}
        self.containers = {id(layer) for layer in containers}
        self.tensors = {}  # id(KerasTensor) -> _Tensor
        self.records = []  # (layer, input _Tensors, output _Tensor or list, unit)
        self.names = set()

    def tensor(self, kt):
        found = self.tensors.get(id(kt))
        if found is None:
            raise graph_lib.GraphError(
                f"credit cannot follow the functional graph to tensor {kt.name!r}: it is "
                "not produced by a call of the graph. Build the model from keras.Input "
                "through its layers.")
        return found

    def produce(self, kts, op):
        out = []
        for k, kt in enumerate(kts):
            name = f"{op.name}:{k}"
            while name in self.names:
                name = name + "'"
            self.names.add(name)
            t = _Tensor(kt, name, op)
            self.tensors[id(kt)] = t
            op.outputs.append(t)
            out.append(t)
        return out

    def read(self, functional, prefix=""):
        for operation, inputs, outputs in compat.functional_calls(functional):
            args = [self.tensor(kt) for kt in inputs]
            is_layer = isinstance(operation, keras.layers.Layer)
            if is_layer and id(operation) in self.containers:
                inner = compat.functional_graph(operation)
                if inner is None:
                    raise graph_lib.GraphError(
                        f"layer {operation.name!r} ({type(operation).__name__}) holds other "
                        "layers and is not a functional or Sequential model; on the "
                        f"{keras.config.backend()} backend credit reads a model's structure "
                        "from Keras's functional graph, so it cannot take this layer "
                        "apart. Build it as a functional model, or use the tensorflow "
                        "backend.")
                inner_inputs = list(inner.inputs)
                if len(inner_inputs) != len(args):
                    raise graph_lib.GraphError(
                        f"nested model {operation.name!r} is called on {len(args)} tensors "
                        f"but has {len(inner_inputs)} inputs; credit cannot follow it.")
                for kt, t in zip(inner_inputs, args):
                    self.tensors[id(kt)] = t
                self.read(inner, prefix + operation.name + "/")
                inner_outputs = [self.tensor(kt) for kt in inner.outputs]
                for kt, t in zip(outputs, inner_outputs):
                    self.tensors[id(kt)] = t
                self.records.append((operation, args, _one(inner_outputs), False))
                continue
            op = _Op(type(operation).__name__, prefix + operation.name, args)
            for t in args:
                t._consumers.append(op)
            produced = self.produce(outputs, op)
            if is_layer:
                self.records.append((operation, args, _one(produced),
                                     id(operation) in self.units))


def _one(tensors):
    return tensors[0] if len(tensors) == 1 else list(tensors)


def analyse(model):
    """The :class:`credit.graph.Graph` of a functional or Sequential ``model``, read from
    Keras's functional graph (no call of the model).

    Raises:
        credit.graph.GraphError: a subclassed model, or a layer inside it that holds
            other layers and is not a functional model, with the fix.
    """
    functional = compat.functional_graph(model)
    if functional is None:
        raise graph_lib.GraphError(
            f"model {model.name!r} ({type(model).__name__}) has no functional graph: on the "
            f"{keras.config.backend()} backend credit reads a model's structure from "
            "Keras's functional graph, which a subclassed model (or a Sequential model "
            "without a known input shape) does not have. Use a functional model "
            "(credit.Model(inputs, outputs)) or a credit.Sequential starting with "
            "keras.Input, or the tensorflow backend.")
    names = graph_lib.unique_names(model)
    units, containers, inner, inner_layers = graph_lib.walk(model, names)
    reader = _Reader(units, containers)
    inputs = []
    for k, kt in enumerate(functional.inputs):
        op = _Op("Placeholder", f"input_{k}", [])
        inputs.extend(reader.produce([kt], op))
    reader.read(functional)
    outputs = [reader.tensor(kt) for kt in functional.outputs]
    nodes = []
    for i, (layer, args, output, unit) in enumerate(reader.records):
        flat = output if isinstance(output, list) else [output]
        shape = graph_lib._shape(flat[0]) if len(flat) == 1 else None
        nodes.append(graph_lib.Node(i, layer, unit, args, output, shape))
    layers = {}
    for layer in units + containers + inner_layers + [
            l for l in compat.sublayers(model, recursive=True)
            if not isinstance(l, keras.layers.InputLayer)]:
        layers.setdefault(names.get(id(layer), layer.name), layer)
    return graph_lib.Graph(model, nodes, {t.name for t in inputs}, outputs, layers, inner,
                           names)
