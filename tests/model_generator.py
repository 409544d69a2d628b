"""Random Keras models for the oracle tests (``tests/test_oracle.py``).

``generate(seed)`` builds a small functional Keras model from a seed, with data and
losses, in the spirit of BackPACK's test problems: one table of problems over which
every identity is checked against Keras's own gradient. A model draws from

- inputs: vectors, sequences (optionally masked), token ids (Embedding, optionally
  ``mask_zero``), images, volumes, sequences of 1-D frames (TimeDistributed); one or
  two of them (two: the branches are concatenated, and two vector inputs may share
  their first layer);
- every weighted layer type that credit transports (Dense, EinsumDense, Conv1D/2D/3D
  with valid/same/causal padding, strides, dilation and groups, Conv1D/2D/3DTranspose,
  DepthwiseConv1D/2D, SeparableConv1D/2D), recurrent layers (SimpleRNN, GRU, LSTM,
  Bidirectional), MultiHeadAttention, PReLU, BatchNormalization and
  LayerNormalization, Dropout (with a fixed seed: see :func:`reset_seeds`), pooling;
- residual ``Add`` merges, a layer applied twice in a row, a nested functional model,
  a subclassed layer made of Dense sublayers;
- activity and kernel regularisers;
- one or two outputs (softmax / sigmoid / linear heads, a per-step sequence head, a
  head from logits), each with its loss.

Sizes are tiny (batch 4, a few units, sequences of 4 to 6 steps, 6x6 images), so each
model builds and runs in a fraction of a second. ``Problem.description`` lists what
the model contains, so that a failure is reproducible from its seed:
``python -c "import sys; sys.path.insert(0, 'tests'); import model_generator as g;
p = g.generate(17); print(p.description); p.model.summary()"``.
"""

import dataclasses

import keras
import numpy as np

L = keras.layers
BATCH = 4
ACTIVATIONS = ["relu", "tanh", "sigmoid", "gelu", "elu", "softplus", "swish", None]


@dataclasses.dataclass
class Problem:
    """A generated test problem.

    Attributes:
        seed: the seed it was generated from.
        model: a compiled functional ``keras.Model`` (its ``loss``: one per output).
        x: the input arrays (one array, or a list for several inputs).
        y: the targets (one array, or a list for several outputs).
        losses: the loss of each output, as compiled.
        description: what the model contains, one short item per construct.
        features: the set of constructs used (for counting coverage).
    """

    seed: int
    model: keras.Model
    x: object
    y: object
    losses: list
    description: str
    features: set


class ResidualDense(keras.layers.Layer):
    """A subclassed layer made of two Dense sublayers: ``x + W2 phi(W1 x)``."""

    def __init__(self, units, width, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.inner = L.Dense(width, activation=activation, name="inner")
        self.outer = L.Dense(units, name="outer")

    def build(self, input_shape):
        self.inner.build(input_shape)
        self.outer.build(tuple(input_shape[:-1]) + (self.inner.units,))

    def call(self, x):
        return x + self.outer(self.inner(x))

    def compute_output_shape(self, input_shape):
        return input_shape


class _Builder:
    def __init__(self, seed, exclude=()):
        self.seed = seed
        self.exclude = frozenset(exclude)
        self.rng = np.random.default_rng(seed)
        self.parts = []
        self.features = set()
        self.count = 0

    # -- small helpers ------------------------------------------------------------------

    def chance(self, p):
        return self.rng.random() < p

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def units(self, low=2, high=6):
        return int(self.rng.integers(low, high + 1))

    def act(self):
        return self.pick(ACTIVATIONS)

    def name(self, kind):
        self.count += 1
        return f"{kind}_{self.count}"

    def note(self, feature, text=None):
        self.features.add(feature)
        self.parts.append(text or feature)

    def regularisers(self):
        kw = {}
        if self.chance(0.15) and "activity_regularizer" not in self.exclude:
            kw["activity_regularizer"] = keras.regularizers.L2(0.01)
            self.features.add("activity_regularizer")
            self.parts[-1] += "+activity_reg"
        if self.chance(0.1):
            kw["kernel_regularizer"] = keras.regularizers.L2(0.01)
            self.features.add("kernel_regularizer")
            self.parts[-1] += "+kernel_reg"
        return kw

    def dropout(self, h):
        rate = float(self.pick([0.2, 0.5]))
        self.note("dropout", f"dropout({rate})")
        return L.Dropout(rate, seed=int(self.rng.integers(1 << 30)),
                         name=self.name("dropout"))(h)

    def norm(self, h, allow_batch=True):
        if allow_batch and self.chance(0.5):
            self.note("batch_norm")
            return L.BatchNormalization(name=self.name("bn"))(h)
        self.note("layer_norm")
        return L.LayerNormalization(name=self.name("ln"))(h)

    # -- vectors (batch, d) -------------------------------------------------------------

    def vector_op(self, h):
        d = h.shape[-1]
        op = self.pick(["dense", "dense", "einsum", "residual", "norm", "dropout",
                        "nested", "subclassed", "twice", "prelu", "gated", "merge",
                        "lora", "frozen", "repeat"])
        if op == "gated":
            u = self.units()
            self.note("multiply_merge", f"gated({u})")
            a = L.Dense(u, activation="tanh", name=self.name("gate_a"))(h)
            b = L.Dense(u, activation="sigmoid", name=self.name("gate_b"))(h)
            return L.Multiply(name=self.name("multiply"))([a, b])
        if op == "merge":
            kind = self.pick(["Subtract", "Average", "Maximum", "Minimum"])
            self.note("other_merge", f"{kind.lower()}(dense,dense)")
            a = L.Dense(d, activation=self.act(), name=self.name("merge_a"))(h)
            return getattr(L, kind)(name=self.name(kind.lower()))([h, a])
        if op == "lora":
            u = self.units()
            self.note("lora", f"lora_dense({u})")
            layer = L.Dense(u, activation=self.act(), name=self.name("lora"))
            layer.build((None, d))
            layer.enable_lora(2)
            # Non-zero B: the effective kernel differs from the frozen one.
            layer.lora_kernel_b.assign(self.rng.normal(size=(2, u)).astype("float32"))
            return layer(h)
        if op == "frozen":
            u = self.units()
            self.note("frozen_layer", f"frozen_dense({u})")
            layer = L.Dense(u, activation=self.act(), name=self.name("frozen"))
            layer.trainable = False
            return layer(h)
        if op == "repeat":
            steps, u = self.units(2, 3), self.units(2, 3)
            kind = self.pick(["SimpleRNN", "GRU", "LSTM"])
            self.note("repeat_vector", f"repeat({steps})->{kind.lower()}({u},last)")
            self.features.add(kind.lower())
            r = L.RepeatVector(steps, name=self.name("repeat"))(h)
            return getattr(L, kind)(u, name=self.name(kind.lower()))(r)
        if op == "dense":
            u, a = self.units(), self.act()
            self.note("dense", f"dense({u},{a})")
            return L.Dense(u, activation=a, use_bias=self.chance(0.8),
                           name=self.name("dense"), **self.regularisers())(h)
        if op == "einsum":
            u = self.units()
            self.note("einsum_dense", f"einsum_dense({u})")
            return L.EinsumDense("ab,bc->ac", output_shape=u,
                                 bias_axes="c" if self.chance(0.5) else None,
                                 activation=self.act(), name=self.name("einsum"))(h)
        if op == "residual":
            self.note("residual_add", "residual(dense,dense)")
            r = L.Dense(self.units(), activation=self.act(), name=self.name("res_a"))(h)
            r = L.Dense(d, name=self.name("res_b"), **self.regularisers())(r)
            return L.Add(name=self.name("add"))([h, r])
        if op == "norm":
            return self.norm(h)
        if op == "dropout":
            return self.dropout(h)
        if op == "nested":
            u = self.units()
            self.note("nested_model", f"nested_model({u})")
            inner_in = keras.Input((d,))
            t = L.Dense(u, activation=self.act(), name=self.name("nested_dense"))(inner_in)
            if self.chance(0.5):
                t = L.LayerNormalization(name=self.name("nested_ln"))(t)
            t = L.Dense(self.units(), activation=self.act(), name=self.name("nested_dense"))(t)
            return keras.Model(inner_in, t, name=self.name("nested"))(h)
        if op == "subclassed":
            self.note("subclassed_layer")
            return ResidualDense(d, self.units(), activation=self.act(),
                                 name=self.name("subclassed"))(h)
        if op == "twice":
            self.note("layer_called_twice")
            shared = L.Dense(d, activation=self.pick(["tanh", "sigmoid", None]),
                             name=self.name("twice"))
            return shared(shared(h))
        self.note("prelu")
        return L.PReLU(name=self.name("prelu"))(h)

    # -- sequences (batch, t, c) --------------------------------------------------------

    def seq_op(self, h, masked):
        t, c = h.shape[1], h.shape[2]
        ops = ["rnn", "rnn", "mha", "timedist", "dense_seq", "norm", "dropout",
               "cross_attention", "attention"]
        if not masked:
            # Convolutions and EinsumDense do not support masks (Keras drops the mask).
            ops += ["einsum_seq", "conv1d", "conv1d", "conv1d_t", "conv1d_t", "depthwise1d",
                    "separable1d",
                    "residual_conv", "pad_crop", "upsample"]
            if t >= 4:
                ops += ["pool"]
        op = self.pick(ops)
        if op == "cross_attention":
            heads, key_dim, u = self.units(1, 2), self.units(2, 3), self.units(2, 4)
            self.note("multi_head_attention", f"cross_mha({heads}x{key_dim},kv=dense({u}))")
            kv = L.Dense(u, activation=self.act(), name=self.name("kv"))(h)
            return L.MultiHeadAttention(heads, key_dim, name=self.name("mha"))(h, kv, kv)
        if op == "attention":
            self.note("dot_attention", "attention(dense_q,h)")
            q = L.Dense(c, name=self.name("query"))(h)
            return L.Attention(use_scale=bool(self.chance(0.5)), name=self.name("att"))(
                [q, h])
        if op == "pad_crop":
            self.note("pad_crop", "zero_pad1d->conv1d(valid)")
            h = L.ZeroPadding1D(1, name=self.name("pad"))(h)
            self.features.add("conv1d")
            h = L.Conv1D(self.units(2, 4), 3, activation=self.act(),
                         name=self.name("conv1d"))(h)
            return L.Cropping1D((1, 0), name=self.name("crop"))(h) if t > 3 else h
        if op == "upsample":
            self.note("upsampling", "upsample1d->conv1d(s2)")
            h = L.UpSampling1D(2, name=self.name("up"))(h)
            self.features.add("conv1d")
            return L.Conv1D(self.units(2, 4), 2, strides=2, activation=self.act(),
                            name=self.name("conv1d"))(h)
        if op == "rnn":
            kind = self.pick(["SimpleRNN", "GRU", "LSTM"])
            u = self.units(2, 4)
            kw = {}
            if self.chance(0.25):
                kw.update(dropout=0.2, recurrent_dropout=0.2,
                          seed=int(self.rng.integers(1 << 30)))
                self.features.add("rnn_dropout")
            if kind == "GRU":
                kw["reset_after"] = bool(self.chance(0.5))
            rnn = getattr(L, kind)(u, return_sequences=True, name=self.name(kind.lower()),
                                   **kw)
            if self.chance(0.4):
                mode = self.pick(["concat", "sum", "ave"])
                self.note("bidirectional", f"bidirectional({kind.lower()}({u}),{mode})")
                self.features.add(kind.lower())
                return L.Bidirectional(rnn, merge_mode=mode, name=self.name("bidi"))(h)
            self.note(kind.lower(), f"{kind.lower()}({u})")
            if kw.get("dropout"):
                self.parts[-1] += "[dropout]"
            return rnn(h)
        if op == "mha":
            heads, key_dim = self.units(1, 2), self.units(2, 3)
            causal = bool(self.chance(0.3))
            self.note("multi_head_attention",
                      f"mha({heads}x{key_dim}{',causal' if causal else ''})")
            a = L.MultiHeadAttention(heads, key_dim, name=self.name("mha"))(
                h, h, use_causal_mask=causal)
            h = L.Add(name=self.name("add"))([h, a])
            self.features.add("residual_add")
            return L.LayerNormalization(name=self.name("ln"))(h)
        if op == "timedist":
            u = self.units()
            self.note("time_distributed", f"time_distributed(dense({u}))")
            return L.TimeDistributed(L.Dense(u, activation=self.act()),
                                     name=self.name("td"))(h)
        if op == "dense_seq":
            u = self.units()
            self.note("dense", f"dense_on_seq({u})")
            return L.Dense(u, activation=self.act(), name=self.name("dense"),
                           **self.regularisers())(h)
        if op == "einsum_seq":
            u = self.units()
            self.note("einsum_dense", f"einsum_dense_seq({u})")
            return L.EinsumDense("abc,cd->abd", output_shape=(t, u),
                                 bias_axes="d" if self.chance(0.5) else None,
                                 activation=self.act(), name=self.name("einsum"))(h)
        if op == "norm":
            return self.norm(h, allow_batch=not masked)
        if op == "dropout":
            return self.dropout(h)
        if op == "conv1d":
            f, k = self.units(2, 4), int(self.pick([1, 2, 3]))
            padding = self.pick(["valid", "same", "causal"])
            strides, dilation, groups = 1, 1, 1
            roll = self.rng.random()
            if roll < 0.3 and padding != "causal":
                strides = 2
            elif roll < 0.6:
                dilation = 2
            if self.chance(0.3) and c % 2 == 0:
                groups, f = 2, 2 * self.units(1, 2)
            if padding == "valid" and t - (k - 1) * dilation < 2:
                padding = "same"
            self.note("conv1d", f"conv1d({f},k{k},{padding},s{strides},d{dilation},"
                                 f"g{groups})")
            return L.Conv1D(f, k, strides=strides, padding=padding, dilation_rate=dilation,
                            groups=groups, activation=self.act(),
                            name=self.name("conv1d"), **self.regularisers())(h)
        if op == "conv1d_t":
            f, k = self.units(2, 4), int(self.pick([2, 3]))
            strides = int(self.pick([1, 2])) if t <= 6 else 1
            padding = self.pick(["valid", "same"])
            self.note("conv1d_transpose", f"conv1d_transpose({f},k{k},{padding},s{strides})")
            return L.Conv1DTranspose(f, k, strides=strides, padding=padding,
                                     activation=self.act(), name=self.name("conv1dt"))(h)
        if op == "depthwise1d":
            m, k = self.units(1, 2), int(self.pick([2, 3]))
            padding = "same" if t < 4 else self.pick(["valid", "same"])
            self.note("depthwise_conv1d", f"depthwise_conv1d(m{m},k{k},{padding})")
            return L.DepthwiseConv1D(k, depth_multiplier=m, padding=padding,
                                     activation=self.act(), name=self.name("dw1d"))(h)
        if op == "separable1d":
            f, k = self.units(2, 4), int(self.pick([2, 3]))
            padding = "same" if t < 4 else self.pick(["valid", "same"])
            self.note("separable_conv1d", f"separable_conv1d({f},k{k},{padding})")
            return L.SeparableConv1D(f, k, padding=padding,
                                     depth_multiplier=self.units(1, 2),
                                     activation=self.act(), name=self.name("sep1d"))(h)
        if op == "residual_conv":
            self.note("residual_add", "residual(conv1d)")
            r = L.Conv1D(c, 3, padding=self.pick(["same", "causal"]), activation=self.act(),
                         name=self.name("conv1d"))(h)
            self.features.add("conv1d")
            return L.Add(name=self.name("add"))([h, r])
        self.note("pooling", "pool1d")
        return self.pick([L.MaxPooling1D, L.AveragePooling1D])(2, name=self.name("pool"))(h)

    def seq_reduce(self, h, masked):
        options = ["gap", "rnn"] + ([] if masked else ["flatten", "gmp"])
        op = self.pick(options)
        if op == "gap":
            self.parts.append("global_avg_pool")
            return L.GlobalAveragePooling1D(name=self.name("gap"))(h)
        if op == "gmp":
            self.parts.append("global_max_pool")
            return L.GlobalMaxPooling1D(name=self.name("gmp"))(h)
        if op == "flatten":
            self.parts.append("flatten")
            return L.Flatten(name=self.name("flatten"))(h)
        kind = self.pick(["SimpleRNN", "GRU", "LSTM"])
        u = self.units(2, 4)
        self.note(kind.lower(), f"{kind.lower()}({u},last)")
        rnn = getattr(L, kind)(u, name=self.name(kind.lower()))
        if self.chance(0.3):
            self.note("bidirectional")
            return L.Bidirectional(rnn, name=self.name("bidi"))(h)
        return rnn(h)

    # -- images (batch, h, w, c) and volumes ----------------------------------------------

    def image_op(self, h):
        size, c = min(h.shape[1], h.shape[2]), h.shape[3]
        ops = ["conv2d", "conv2d", "conv2d_t", "conv2d_t", "depthwise2d", "separable2d",
               "separable2d", "bn",
               "residual_conv", "dropout", "nested_sequential", "spatial_dropout",
               "upsample", "permute"]
        if size >= 4:
            ops.append("pool")
        op = self.pick(ops)
        padding = "same" if size < 4 else self.pick(["valid", "same"])
        if op == "conv2d":
            f, k = self.units(2, 4), int(self.pick([1, 2, 3]))
            strides, dilation, groups = 1, 1, 1
            roll = self.rng.random()
            if roll < 0.3:
                strides = 2
            elif roll < 0.5 and size >= 5:
                dilation = 2
            if self.chance(0.3) and c % 2 == 0:
                groups, f = 2, 2 * self.units(1, 2)
            if padding == "valid" and size - (k - 1) * dilation < 2:
                padding = "same"
            self.note("conv2d", f"conv2d({f},k{k},{padding},s{strides},d{dilation},"
                                 f"g{groups})")
            return L.Conv2D(f, k, strides=strides, padding=padding, dilation_rate=dilation,
                            groups=groups, activation=self.act(), name=self.name("conv2d"),
                            **self.regularisers())(h)
        if op == "conv2d_t":
            f, k = self.units(2, 3), int(self.pick([2, 3]))
            strides = int(self.pick([1, 2])) if size <= 5 else 1
            output_padding = 1 if strides == 2 and self.chance(0.4) else None
            self.note("conv2d_transpose", f"conv2d_transpose({f},k{k},{padding},s{strides},"
                                          f"op{output_padding})")
            return L.Conv2DTranspose(f, k, strides=strides, padding=padding,
                                     output_padding=output_padding,
                                     activation=self.act(), name=self.name("conv2dt"))(h)
        if op == "depthwise2d":
            m = self.units(1, 2)
            self.note("depthwise_conv2d", f"depthwise_conv2d(m{m},{padding})")
            return L.DepthwiseConv2D(3 if padding == "same" else 2, depth_multiplier=m,
                                     padding=padding, activation=self.act(),
                                     strides=int(self.pick([1, 2])),
                                     name=self.name("dw2d"))(h)
        if op == "separable2d":
            f = self.units(2, 4)
            self.note("separable_conv2d", f"separable_conv2d({f},{padding})")
            return L.SeparableConv2D(f, 3 if padding == "same" else 2, padding=padding,
                                     depth_multiplier=self.units(1, 2),
                                     activation=self.act(), name=self.name("sep2d"))(h)
        if op == "bn":
            self.note("batch_norm")
            return L.BatchNormalization(name=self.name("bn"))(h)
        if op == "residual_conv":
            self.note("residual_add", "residual(conv2d,bn)")
            self.features.add("conv2d")
            r = L.Conv2D(c, 3, padding="same", activation="relu", name=self.name("conv2d"))(h)
            r = L.BatchNormalization(name=self.name("bn"))(r)
            return L.Activation(self.act() or "linear", name=self.name("act"))(
                L.Add(name=self.name("add"))([h, r]))
        if op == "dropout":
            return self.dropout(h)
        if op == "nested_sequential":
            f = self.units(2, 3)
            self.note("nested_model", f"nested_sequential(conv2d({f}),bn,conv2d)")
            self.features.add("conv2d")
            inner = keras.Sequential([
                keras.Input(tuple(h.shape[1:])),
                L.Conv2D(f, 3, padding="same", activation=self.act(),
                         name=self.name("nested_conv2d")),
                L.BatchNormalization(name=self.name("nested_bn")),
                L.Conv2D(f, 1, activation=self.act(), name=self.name("nested_conv2d"))],
                name=self.name("nested_seq"))
            return inner(h)
        if op == "spatial_dropout":
            self.note("dropout", "spatial_dropout2d")
            return L.SpatialDropout2D(0.3, seed=int(self.rng.integers(1 << 30)),
                                      name=self.name("sdrop"))(h)
        if op == "upsample":
            self.note("upsampling", "upsample2d->conv2d(s2)")
            self.features.add("conv2d")
            h = L.UpSampling2D(2, name=self.name("up"))(h)
            return L.Conv2D(self.units(2, 3), 3, strides=2, padding="same",
                            activation=self.act(), name=self.name("conv2d"))(h)
        if op == "permute":
            self.note("permute", "permute(2,1,3)->zero_pad2d")
            h = L.Permute((2, 1, 3), name=self.name("permute"))(h)
            return L.ZeroPadding2D(1, name=self.name("pad"))(h)
        self.note("pooling", "pool2d")
        return self.pick([L.MaxPooling2D, L.AveragePooling2D])(2, name=self.name("pool"))(h)

    def volume_op(self, h):
        op = self.pick(["conv3d", "conv3d", "conv3d_t", "bn"])
        if op == "conv3d":
            f = self.units(2, 3)
            padding = self.pick(["valid", "same"]) if h.shape[1] >= 4 else "same"
            self.note("conv3d", f"conv3d({f},{padding})")
            return L.Conv3D(f, 2, padding=padding, strides=int(self.pick([1, 2])),
                            activation=self.act(), name=self.name("conv3d"))(h)
        if op == "conv3d_t":
            f = self.units(2, 3)
            self.note("conv3d_transpose", f"conv3d_transpose({f})")
            return L.Conv3DTranspose(f, 2, padding=self.pick(["valid", "same"]),
                                     activation=self.act(), name=self.name("conv3dt"))(h)
        self.note("batch_norm")
        return L.BatchNormalization(name=self.name("bn"))(h)

    # -- inputs -------------------------------------------------------------------------

    def branch(self, kind, shared=None):
        """One input and its stack, reduced to a vector: (keras.Input, array, vector)."""
        rng = self.rng
        if kind == "vec":
            d = self.units(3, 6)
            inp = keras.Input((d,), name=self.name("in_vec"))
            x = rng.normal(size=(BATCH, d)).astype("float32")
            self.parts.append(f"in:vec({d})")
            h = shared(inp) if shared is not None else inp
            for _ in range(int(rng.integers(1, 4))):
                h = self.vector_op(h)
            return inp, x, h
        if kind in ("seq", "tok", "frames"):
            t = self.units(4, 6)
            masked = False
            if kind == "seq":
                c = self.units(2, 4)
                inp = keras.Input((t, c), name=self.name("in_seq"))
                x = rng.normal(size=(BATCH, t, c)).astype("float32")
                h = inp
                self.parts.append(f"in:seq({t},{c})")
                if self.chance(0.3):
                    masked = True
                    lengths = rng.integers(2, t + 1, size=BATCH)
                    lengths[0] = t
                    for i, n in enumerate(lengths):
                        x[i, n:] = 0.0
                    self.note("masking")
                    h = L.Masking(0.0, name=self.name("masking"))(h)
            elif kind == "tok":
                vocab, c = 7, self.units(2, 4)
                inp = keras.Input((t,), dtype="int32", name=self.name("in_tok"))
                x = rng.integers(1, vocab, size=(BATCH, t)).astype("int32")
                masked = bool(self.chance(0.4))
                if masked:
                    lengths = rng.integers(2, t + 1, size=BATCH)
                    lengths[0] = t
                    for i, n in enumerate(lengths):
                        x[i, n:] = 0
                    self.note("mask_zero")
                self.note("embedding", f"in:tok({t})->embedding({c})")
                h = L.Embedding(vocab, c, mask_zero=masked, name=self.name("embedding"))(inp)
            else:
                length, c = 5, 2
                inp = keras.Input((t, length, c), name=self.name("in_frames"))
                x = rng.normal(size=(BATCH, t, length, c)).astype("float32")
                f = self.units(2, 3)
                self.note("time_distributed", f"in:frames({t},{length},{c})"
                                              f"->td(conv1d({f}))->td(flatten)")
                self.features.add("conv1d")
                h = L.TimeDistributed(L.Conv1D(f, 3, activation=self.act()),
                                      name=self.name("td"))(inp)
                h = L.TimeDistributed(L.Flatten(), name=self.name("td"))(h)
            for _ in range(int(rng.integers(1, 4))):
                h = self.seq_op(h, masked)
            seq = h
            return inp, x, self.seq_reduce(h, masked), seq
        if kind == "img":
            size, c = self.units(5, 7), self.units(2, 3)
            inp = keras.Input((size, size, c), name=self.name("in_img"))
            x = rng.normal(size=(BATCH, size, size, c)).astype("float32")
            self.parts.append(f"in:img({size},{size},{c})")
            h = inp
            for _ in range(int(rng.integers(1, 4))):
                h = self.image_op(h)
            op = self.pick(["flatten", "gap", "gmp"])
            self.parts.append(op)
            layer = {"flatten": L.Flatten, "gap": L.GlobalAveragePooling2D,
                     "gmp": L.GlobalMaxPooling2D}[op]
            return inp, x, layer(name=self.name(op))(h)
        # volume
        inp = keras.Input((4, 4, 4, 2), name=self.name("in_vol"))
        x = rng.normal(size=(BATCH, 4, 4, 4, 2)).astype("float32")
        self.parts.append("in:vol(4,4,4,2)")
        h = inp
        for _ in range(int(rng.integers(1, 3))):
            h = self.volume_op(h)
        op = self.pick(["flatten", "gap"])
        self.parts.append(op)
        return inp, x, (L.Flatten if op == "flatten" else L.GlobalAveragePooling3D)(
            name=self.name(op))(h)

    # -- outputs ------------------------------------------------------------------------

    def head(self, h):
        """An output layer on ``h`` with its target array and loss."""
        rng = self.rng
        kind = self.pick(["softmax", "softmax", "mse", "sigmoid", "logits", "onehot"])
        self.parts.append(f"out:{kind}")
        if kind == "softmax":
            out = L.Dense(3, activation="softmax", name=self.name("head"))(h)
            return out, rng.integers(0, 3, size=BATCH), "sparse_categorical_crossentropy"
        if kind == "onehot":
            out = L.Dense(3, activation="softmax", name=self.name("head"))(h)
            return out, np.eye(3, dtype="float32")[rng.integers(0, 3, size=BATCH)], \
                "categorical_crossentropy"
        if kind == "mse":
            u = self.units(1, 2)
            out = L.Dense(u, name=self.name("head"))(h)
            return out, rng.normal(size=(BATCH, u)).astype("float32"), "mse"
        if kind == "sigmoid":
            out = L.Dense(1, activation="sigmoid", name=self.name("head"))(h)
            return out, rng.integers(0, 2, size=(BATCH, 1)).astype("float32"), \
                "binary_crossentropy"
        out = L.Dense(3, name=self.name("head"))(h)
        return out, rng.integers(0, 3, size=BATCH), \
            keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def seq_head(self, seq):
        u = self.units(1, 2)
        self.note("sequence_output", f"out:seq_mse({u})")
        out = L.TimeDistributed(L.Dense(u), name=self.name("seq_head"))(seq)
        return out, self.rng.normal(size=(BATCH,) + tuple(seq.shape[1:2]) + (u,)).astype(
            "float32"), "mse"

    def build(self):
        kinds = ["vec", "vec", "seq", "tok", "img", "vol", "frames"]
        n_inputs = 2 if self.chance(0.3) else 1
        inputs, xs, vectors, seqs = [], [], [], []
        shared = None
        if n_inputs == 2 and self.chance(0.4):
            # Two inputs of one shape through one shared layer (a siamese pair).
            seq_pair = bool(self.chance(0.4))
            names = ["seq", "seq"] if seq_pair else ["vec", "vec"]
            self.note("shared_layer")
            if seq_pair:
                d = (self.units(4, 6), self.units(2, 3))
                shared = L.Conv1D(3, 2, padding=self.pick(["same", "causal"]),
                                  activation=self.act(), name=self.name("shared"))
                self.features.add("conv1d")
            else:
                d = (self.units(3, 6),)
                shared = L.Dense(4, activation=self.act(), name=self.name("shared"))
        else:
            names = [self.pick(kinds) for _ in range(n_inputs)]
            d = None
        for kind in names:
            if shared is not None:
                inp = keras.Input(d, name=self.name("in_" + kind))
                x = self.rng.normal(size=(BATCH,) + d).astype("float32")
                self.parts.append(f"in:{kind}{d}->shared")
                h = shared(inp)
                if kind == "seq":
                    for _ in range(int(self.rng.integers(0, 2))):
                        h = self.seq_op(h, False)
                    h = self.seq_reduce(h, False)
                for _ in range(int(self.rng.integers(0, 3))):
                    h = self.vector_op(h)
                out = (inp, x, h)
            else:
                out = self.branch(kind)
            inputs.append(out[0])
            xs.append(out[1])
            vectors.append(out[2])
            if len(out) == 4:
                seqs.append(out[3])
        if len(inputs) == 2:
            self.note("multi_input")
            self.note("concatenate")
            h = L.Concatenate(name=self.name("concat"))(vectors)
        else:
            h = vectors[0]
        for _ in range(int(self.rng.integers(0, 3))):
            h = self.vector_op(h)
        outputs, ys, losses = [], [], []
        o, y, loss = self.head(h)
        outputs.append(o), ys.append(y), losses.append(loss)
        if self.chance(0.3):
            self.note("multi_output")
            if seqs and self.chance(0.5):
                o, y, loss = self.seq_head(seqs[0])
            else:
                # A second head, from a hidden layer below the last one.
                o, y, loss = self.head(L.Dense(self.units(), activation=self.act(),
                                               name=self.name("dense"))(h))
            outputs.append(o), ys.append(y), losses.append(loss)
        model = keras.Model(inputs if len(inputs) > 1 else inputs[0],
                            outputs if len(outputs) > 1 else outputs[0],
                            name=f"generated_{self.seed}")
        model.compile(optimizer="sgd", loss=losses if len(losses) > 1 else losses[0])
        return Problem(self.seed, model, xs if len(xs) > 1 else xs[0],
                       ys if len(ys) > 1 else ys[0], losses, " ".join(self.parts),
                       set(self.features))


def generate(seed, exclude=()):
    """A random small Keras model, its batch and its loss(es), from ``seed``.

    Weights are initialised from ``keras.utils.set_random_seed(seed)``, so the same
    seed gives the same model, the same weights and the same data.

    Args:
        seed: the seed.
        exclude: features never to draw (so far only ``"activity_regularizer"``), to
            tell a defect apart from another on the same model: the random draws are
            the same, only the excluded feature is left out.
    """
    keras.utils.set_random_seed(seed)
    return _Builder(seed, exclude).build()


def seed_generators(model):
    """The random-state variables of the model's layers (Dropout's seed generators).

    With ``training=True`` Dropout draws a new mask at each call; the oracle tests
    restore these states (:func:`reset_seeds`) before each forward pass, so that every
    run of the same batch uses the same masks.
    """
    from credit import _keras_compat as compat

    states = []
    for layer in compat.sublayers(model, recursive=True):
        for attr in vars(layer).values():
            if isinstance(attr, keras.random.SeedGenerator):
                states.append(attr.state)
    return [(v, np.array(v.numpy())) for v in states]


def reset_seeds(saved):
    """Restore the states saved by :func:`seed_generators`."""
    for variable, value in saved:
        variable.assign(value)
