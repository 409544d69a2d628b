"""Bad input gets a clear error: the argument, the value received and the fix.

One row of :data:`CASES` per kind of bad input; each asserts the error's type and, with
``pytest.raises(match=...)``, that its message names the argument, the value and the
way out. The kinds:

Names and configs (``credit.get``, ``credit.register``):
 1. unknown method name (the message lists the valid names)
 2. misspelt alias (did you mean)
 3. empty method name
 4. method config without 'name'
 5. method config whose 'name' is not a string
 6. method config with an unknown keyword (did you mean, and the valid hyperparameters)
 7. method of a wrong type (an int)
 8. a class that is not an ErrorSignal, as a method
 9. registering a class that is not an ErrorSignal
10. registering a name that another method has

Where points go (``at=``):
11. a layer name that the model does not have
12. a block index out of range
13. a bool in the list
14. a bare bool
15. the same layer twice (by name and by index)
16. a layer with two outputs
17. a float
18. neither a name, an index nor a list (a dict)

Hyperparameters:
19. negative seed
20. non-numeric seed
21. fractional seed
22. negative feedback-alignment scale
23. non-numeric DFA scale
24. zero DRTP scale
25. infinite sign-symmetry scale
26. negative Kolen-Pollack weight decay
27. non-numeric Kolen-Pollack learning rate
28. ``layers=`` that is not a list of names
29. ``layers=`` naming a non-layer
30. ``layers=`` naming a layer without a transport (an RNN)
31. a probability outside [0, 1] (SG's update_probability)
32. an unknown synthesizer kind
33. negative synthesizer hidden sizes
34. negative synthesizer learning rate
35. an unknown synthesizer target
36. a synthesizer optimizer that Keras does not know
37. negative auxiliary-task weight
38. backprop's blockwise that is not a bool

Methods on models that do not fit them:
39. kickback on a multi-class output
40. kickback on a model that is not a chain
41. DRTP on a model with two outputs
42. a method bound to another model, to compile
43. a method bound to another model, to credit.summary
44. fit(method=) with a value of the wrong type
45. fit(method=) with an unknown name

The training step (``credit.compute_gradients``):
46. a model without a loss
47. a loss_fn that is not callable
48. a loss_fn that does not take sample weights
49. something that is not a model
50. DRTP with targets of the wrong shape
51. DRTP without targets
52. DRTP with sample weights of more axes than the output

Tools:
53. credit.summary of something that is not a model
54. credit.summary of a Keras model without a method
55. credit.wrap of a subclassed model
56. credit.wrap of a layer
57. credit.alignment with an unknown ``by``
58. AlignmentCallback with ``every=0``
59. Kolen-Pollack's misalignment before the method is bound
60. brSF's draw for a layer it does not cross
61. credit.data.load of an unknown data set (lists the valid names)
62. credit.data.load with an option the data set does not take

Models are tiny and built once per kind (module-scoped), so the module runs in seconds.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import credit
import credit.data
from credit.graph import GraphError


@pytest.fixture(autouse=True)
def _fresh_keras():
    """Overrides conftest's: no clear_session, so the cached models stay valid."""
    keras.utils.set_random_seed(0)
    yield


X = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
Y = np.arange(8) % 3


@functools.lru_cache(maxsize=None)
def mlp():
    """Three classes, two hidden blocks (named h1, h2), compiled with backprop."""
    model = credit.Sequential([keras.Input((4,)),
                               keras.layers.Dense(5, activation="tanh", name="h1"),
                               keras.layers.Dense(5, activation="tanh", name="h2"),
                               keras.layers.Dense(3, activation="softmax", name="out")],
                              name="mlp")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


@functools.lru_cache(maxsize=None)
def other():
    """A second model, compiled with DFA: its method is bound to it."""
    model = credit.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"),
                               keras.layers.Dense(3, activation="softmax")], name="other")
    model.compile(loss="sparse_categorical_crossentropy", method="dfa")
    return model


def fresh_mlp():
    return credit.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"),
                              keras.layers.Dense(3, activation="softmax")], name="fresh")


class Two(keras.layers.Layer):
    def call(self, x):
        return x, 2 * x


@functools.lru_cache(maxsize=None)
def two_outputs():
    """A layer with two outputs (named 'two') inside; the model has two outputs too."""
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, activation="tanh", name="h")(inputs)
    a, b = Two(name="two")(h)
    h = keras.layers.Add()([a, b])
    model = credit.Model(inputs, [keras.layers.Dense(3, name="y1")(h),
                                  keras.layers.Dense(1, name="y2")(h)], name="two_out")
    model.compile(loss="mse")
    return model


@functools.lru_cache(maxsize=None)
def residual():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4, activation="tanh")(inputs)
    h = keras.layers.Add()([h, keras.layers.Dense(4, activation="tanh")(h)])
    model = credit.Model(inputs, keras.layers.Dense(1)(h), name="residual")
    model.compile(loss="mse")
    return model


@functools.lru_cache(maxsize=None)
def rnn():
    # A recurrent layer over a cell without a transport (SimpleRNN, GRU and LSTM have one).
    model = credit.Sequential([keras.Input((3, 4, 1)), keras.layers.ConvLSTM1D(2, 2, name="rnn"),
                               keras.layers.Flatten(), keras.layers.Dense(2)], name="with_rnn")
    model.compile(loss="mse")
    return model


@functools.lru_cache(maxsize=None)
def plain():
    """A Keras model without a loss or a method."""
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="plain")


class Subclassed(keras.Model):
    def call(self, x):
        return x


def compile_mlp(method):
    mlp().compile(optimizer="sgd", loss="sparse_categorical_crossentropy", method=method)


def at(value, name="dfa"):
    return lambda: compile_mlp({"name": name, "at": value})


def get(**config):
    return lambda: credit.get(config)


def register_int():
    credit.register(int)


def register_taken():
    class Taken(credit.ErrorSignal):
        name = "dfa"

        def build(self, graph):
            pass

        def transport(self, layer, kernels):
            return None

        def signals(self, trace):
            return {}

        def update(self, trace, signals):
            return {}

    credit.register(Taken)


def drtp_step(y, sample_weight=None):
    def step():
        return credit.compute_gradients(
            mlp(), X, y, sample_weight, method={"name": "drtp", "seed": 0},
            loss_fn=lambda y_true, y_pred, *weights: tf.reduce_mean(y_pred))
    return step


def no_sample_weight():
    credit.compute_gradients(mlp(), X, Y, np.ones(8, "float32"), method="fa",
                             loss_fn=lambda y_true, y_pred: tf.reduce_mean(y_pred))


def brsf_draw():
    model = fresh_mlp()
    model.compile(loss="mse", method="brsf")
    model.method.draw("nope")


VALID = "Valid names: 'backprop', 'batchwise_random_sign_feedback'"

CASES = [
    # Names and configs
    ("unknown name", lambda: credit.get("nope"), ValueError,
     rf"unknown credit-assignment method 'nope'\. {VALID}"),
    ("misspelt alias", lambda: credit.get("dfaa"), ValueError,
     rf"method 'dfaa'\. Did you mean 'dfa'\? {VALID}"),
    ("empty name", lambda: credit.get(""), ValueError,
     rf"unknown credit-assignment method ''\. {VALID}"),
    ("config without name", get(seed=1), ValueError,
     r"a method config needs a 'name' key .*got keys \['seed'\]\. Use method.get_config"),
    ("config name not a string", get(name=3), TypeError,
     r"a method name must be a string, one of \['backprop'.*got 3 of type int"),
    ("config unknown keyword", get(name="dfa", sacle=1), ValueError,
     r"'direct_feedback_alignment': unknown hyperparameter\(s\) sacle=1\. Did you mean "
     r"'scale'\? Its hyperparameters: seed, scale, at, through_time\."),
    ("method of wrong type", lambda: credit.get(3), TypeError,
     r"must be None, a name \(one of \['backprop'.*got 3 of type int"),
    ("class not an ErrorSignal", lambda: credit.get(int), TypeError,
     r"a credit-assignment method must be .*ErrorSignal subclass.*got <class 'int'>"),
    ("register a non-method", register_int, TypeError,
     r"register expects a subclass of credit.ErrorSignal, got <class 'int'>"),
    ("register a taken name", register_taken, ValueError,
     r"method name 'dfa' is already registered for 'direct_feedback_alignment'; choose "
     r"another name"),
    # at=
    ("at missing layer", at(["zz"]), GraphError,
     r"model 'mlp' has no layer named 'zz'\. Its layers: h1, h2, out"),
    ("at block out of range", at([7]), GraphError,
     r"at=\[7\] names block 7, but model 'mlp' has 3 blocks \(indices 0\.\.2, or -3\.\.-1\)"),
    ("at bool in list", at([True]), GraphError,
     r"at must hold layer names or block indices; got True of type bool"),
    ("at bare bool", at(True, "drtp"), ValueError,
     r"at must be None or 'stream' \(points on the residual stream\), 'residuals' "
     r"\(after every residual merge\), 'blocks' \(every hidden block\), a layer name, a "
     r"block index or a list of them, e\.g\. at=\['dense_1', 2\]; got True of type bool"),
    ("at duplicate", at(["h1", 0]), GraphError,
     r"at=\['h1', 0\] names point 'h1' twice .*name each point once"),
    ("at layer with two outputs",
     lambda: two_outputs().compile(loss="mse", method={"name": "sg", "at": ["two"]}),
     GraphError, r"layer 'two' returns several tensors; a feedback point needs a layer "
                 r"with one output tensor"),
    ("at float", at([1.5]), GraphError,
     r"at must hold layer names or block indices; got 1\.5 of type float"),
    ("at dict", get(name="dfa", at={"a": 1}), ValueError,
     r"at must be None .*got \{'a': 1\} of type dict"),
    # Hyperparameters
    ("negative seed", get(name="fa", seed=-1), ValueError,
     r"seed must be None \(drawn from numpy's global state\) or an integer >= 0; got -1 "
     r"of type int\. Pass e\.g\. seed=0"),
    ("non-numeric seed", get(name="dfa", seed="x"), ValueError,
     r"seed must be None .*got 'x' of type str"),
    ("fractional seed", get(name="kp", seed=1.5), ValueError,
     r"seed must be None .*got 1\.5 of type float"),
    ("negative FA scale", get(name="fa", scale=-1), ValueError,
     r"scale must be None \(the default\) or a positive number; got -1"),
    ("non-numeric DFA scale", get(name="dfa", scale="big"), ValueError,
     r"scale must be None \(the default\) or a positive number; got 'big'"),
    ("zero DRTP scale", get(name="drtp", scale=0), ValueError,
     r"scale must be None \(the default\) or a positive number; got 0"),
    ("infinite uSF scale", get(name="usf", scale=float("inf")), ValueError,
     r"scale must be None \(the default\) or a positive number; got inf"),
    ("negative KP weight decay", get(name="kp", weight_decay=-0.1), ValueError,
     r"weight_decay must be None \(the model optimizer's\) or a non-negative number; "
     r"got -0\.1"),
    ("non-numeric KP learning rate", get(name="kp", learning_rate="x"), ValueError,
     r"learning_rate must be a positive number .*got 'x'"),
    ("layers not names", get(name="fa", layers=3), ValueError,
     r"layers must be None \(every layer with a transport\) or a list of layer names, "
     r"e\.g\. \['dense_1'\]; got 3"),
    ("layers names a non-layer", lambda: compile_mlp({"name": "fa", "layers": ["nope"]}),
     GraphError, r"layers=\['nope'\] names 'nope', which is not a layer of model 'mlp'; "
                 r"its layers with a transport: \['h1', 'h2', 'out'\]"),
    ("layers names a layer without a transport",
     lambda: rnn().compile(loss="mse", method={"name": "fa", "layers": ["rnn"]}), TypeError,
     r"layer 'rnn' \(ConvLSTM1D\) has no transport: credit has adjoints for .*Dense"),
    ("probability outside [0, 1]", get(name="sg", update_probability=1.5), ValueError,
     r"update_probability must be a number in \[0, 1\] .*got 1\.5"),
    ("unknown synthesizer kind", get(name="sg", synthesizer="cnn"), ValueError,
     r"synthesizer must be one of 'linear', 'mlp'; got 'cnn'"),
    ("negative hidden sizes", get(name="sg", hidden_units=[-3]), ValueError,
     r"hidden_units must be a non-empty list of positive layer sizes, e\.g\. "
     r"\[1024, 1024\]; got \[-3\]"),
    ("negative synthesizer learning rate", get(name="dni", learning_rate=-1), ValueError,
     r"learning_rate must be None \(the optimizer's default\) or a positive number; got -1"),
    ("unknown synthesizer target", get(name="sg", target="x"), ValueError,
     r"target must be one of 'bootstrap', 'true'; got 'x'"),
    ("unknown synthesizer optimizer", get(name="cdni", optimizer="nope"), ValueError,
     r"optimizer 'nope' is not a Keras optimizer"),
    ("negative auxiliary weight", get(name="sg_through_time", aux_weight=-1), ValueError,
     r"aux_weight must be a number >= 0 .*got -1"),
    ("blockwise not a bool", get(name="backprop", blockwise="yes"), ValueError,
     r"blockwise must be True or False; got 'yes' of type str\. Pass blockwise=True"),
    # Methods on models that do not fit them
    ("kickback on a multi-class output", lambda: compile_mlp("kickback"), ValueError,
     r"kickback needs a model with one scalar output per example .*output has shape "
     r"\(3,\)\. Use 'dfa' or 'fa'"),
    ("kickback on a non-chain", lambda: residual().compile(loss="mse", method="kickback"),
     GraphError, r"kickback is defined for chains of blocks, and model 'residual' is not "
                 r"one .*Use 'dfa', 'fa' or 'sg'"),
    ("DRTP on two outputs", lambda: two_outputs().compile(loss="mse", method="drtp"),
     GraphError, r"projects the target of one output\) needs a model with one output; "
                 r"model 'two_out' has 2 outputs \(.*\)\. Use a method that does not read "
                 r"the output error or the target"),
    ("compile with another model's method",
     lambda: fresh_mlp().compile(loss="mse", method=other().method), ValueError,
     r"method=DirectFeedbackAlignment\(.*\) is already bound to model 'other', so it "
     r"cannot train model 'fresh'; pass a name or a fresh instance"),
    ("summary with another model's method", lambda: credit.summary(mlp(), other().method),
     ValueError, r"method=DirectFeedbackAlignment\(.*\) is bound to model 'other', not to "
                 r"model 'mlp'.*credit\.summary\(model, method=method\.get_config\(\)\)"),
    ("fit(method=) of wrong type", lambda: mlp().fit(X, Y, verbose=0, method=3.0), TypeError,
     r"a credit-assignment method must be None, a name .*got 3\.0 of type float"),
    ("fit(method=) unknown", lambda: mlp().fit(X, Y, verbose=0, method="dfb"), ValueError,
     rf"unknown credit-assignment method 'dfb'\. Did you mean 'dfa'\? {VALID}"),
    # compute_gradients
    ("no loss", lambda: credit.compute_gradients(plain(), X, Y, method="dfa"), ValueError,
     r"model 'plain' has no loss: compile it with a loss, e\.g\. .*or pass loss_fn="),
    ("loss_fn not callable",
     lambda: credit.compute_gradients(mlp(), X, Y, method="fa", loss_fn="mse"), TypeError,
     r"loss_fn must be a callable .*got 'mse' of type str\. Pass e\.g\. "
     r"loss_fn=keras\.losses\.get\('mse'\)"),
    ("loss_fn without sample weights", no_sample_weight, TypeError,
     r"loss_fn=.* does not take sample weights .*pass a keras\.losses\.Loss"),
    ("not a model", lambda: credit.compute_gradients("model", X, Y, method="fa"), TypeError,
     r"model must be a Keras model; got 'model' of type str\. Pass the model first"),
    ("DRTP targets of the wrong shape", drtp_step(np.zeros((8, 5), "float32")), ValueError,
     r"targets of shape \(8, 5\) do not fit a model output of 3 units per example: y must "
     r"hold one class index per example"),
    ("DRTP without targets", drtp_step(None), ValueError,
     r"this method needs one target tensor y per batch; got NoneType\. Pass y to fit"),
    ("DRTP sample weights of too many axes",
     drtp_step(Y, np.ones((8, 2, 2), "float32")), ValueError,
     r"sample_weight of shape \(8, 2, 2\) has more axes than the model output "
     r"\(batch, 3\); pass one weight per example"),
    # Tools
    ("summary of a non-model", lambda: credit.summary("model"), TypeError,
     r"credit\.summary takes a Keras model; got model='model' of type str\. Pass the model"),
    ("summary of a model without a method", lambda: credit.summary(plain()), ValueError,
     r"model 'plain' is not a credit model, so it has no method of its own; pass one, "
     r"e\.g\. credit\.summary\(model, method='dfa'\)"),
    ("wrap a subclassed model", lambda: credit.wrap(Subclassed()), TypeError,
     r"credit\.wrap takes a keras\.Sequential or a functional keras\.Model; got "
     r"Subclassed\. For a subclassed model, subclass credit\.Model"),
    ("wrap a layer", lambda: credit.wrap(keras.layers.Dense(2)), TypeError,
     r"credit\.wrap takes a keras\.Sequential or a functional keras\.Model; got Dense"),
    ("alignment by", lambda: credit.alignment(mlp(), X, Y, by="x"), ValueError,
     r"by must be 'layer' or 'block'; got 'x'"),
    ("AlignmentCallback every=0", lambda: credit.AlignmentCallback(X, Y, every=0), ValueError,
     r"every must be an integer >= 1 .*got 0\. Pass e\.g\. every=1"),
    ("misalignment before binding", lambda: credit.get("kp").misalignment(), ValueError,
     r"the method is not bound to a model yet: compile the model with it"),
    ("brSF draw of a layer it does not cross", brsf_draw, ValueError,
     r"layer 'nope' is not crossed by brSF; its layers: \["),
    ("unknown data set", lambda: credit.data.load("nope"), ValueError,
     r"Unknown data set 'nope'\. Valid names: .*digits"),
    ("data set option", lambda: credit.data.load("digits", bogus=1), ValueError,
     r"Data set 'digits' does not accept the option bogus=1; valid options: "),
]


def test_the_docstring_lists_every_kind():
    assert len(CASES) >= 40
    assert len({name for name, *_ in CASES}) == len(CASES)
    assert f"\n{len(CASES)}. " in __doc__


@pytest.mark.parametrize("name,call,error,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(name, call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_rejected_method_leaves_the_shared_model_as_it_was():
    """The cached models stay usable after the failures above: still backprop."""
    model = mlp()
    with pytest.raises(ValueError):
        compile_mlp("kickback")
    assert model.method.name == "backprop"
    assert credit.compute_gradients(model, X, Y).gradients[0] is not None
