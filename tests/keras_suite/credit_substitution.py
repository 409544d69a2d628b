"""A pytest plugin that runs Keras's own test modules with credit's model classes.

Keras ships its tests inside the wheel (``keras/src/models/*_test.py``,
``keras/src/callbacks/*_test.py``). Loaded with ``-p credit_substitution``, this plugin
makes every name those modules use for ``Sequential``, ``Model`` and ``Functional`` mean
``credit.Sequential``, ``credit.Model`` and credit's functional model class (what
``credit.Model(inputs, outputs)`` returns), so that Keras's expectations of its models
are checked against credit's. ``tests/test_keras_suite.py`` runs it in a subprocess.

Why it touches ``keras.src``: the test modules import the model classes from Keras's
private modules (``from keras.src.models.model import Model``, ``from keras.src import
models``), so that is where the substitution has to happen. Only the test modules see
credit's classes: Keras's own modules keep theirs, so ``isinstance`` checks and class
dispatch inside Keras behave as they do for any user of credit.

Environment:
    CREDIT_KERAS_SUITE_METHOD: the method ``compile`` uses when it is given none
        (default ``backprop``), e.g. ``dfa``; other methods for some test files follow
        after semicolons, as ``file=method`` with the file relative to ``keras/src``:
        ``backprop;callbacks/reduce_lr_on_plateau_test.py=dfa``.
    CREDIT_KERAS_SUITE_REPORT: a path; at the end of the session, a JSON file there maps
        each test (its pytest node id) to its outcome (and, for a failure or a skip, the
        message), with three counts: the credit models the test built, the times
        credit's ``train_step`` ran (traced or eager) and the largest number of feedback
        points a method was bound with. They show that the substitution took place,
        and that a method other than backprop did its own thing.
"""

import functools
import json
import os
import pathlib
import sys
import types

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

import credit  # noqa: E402
from keras.src import models as keras_models  # noqa: E402
from keras.src.backend import backend  # noqa: E402
from keras.src.models import functional as keras_functional_module  # noqa: E402
from keras.src.models import model as keras_model_module  # noqa: E402
from keras.src.models import sequential as keras_sequential_module  # noqa: E402

KERAS_SRC = pathlib.Path(keras_models.__file__).resolve().parent.parent


def _methods(setting):
    """``"dfa;models/model_test.py=fa"`` -> ``("dfa", {"models/model_test.py": "fa"})``."""
    default, *files = [part.strip() for part in setting.split(";") if part.strip()] or [
        "backprop"]
    per_file = {}
    for entry in files:
        name, sep, method = entry.partition("=")
        if not sep or not name.strip() or not method.strip():
            raise ValueError(
                f"CREDIT_KERAS_SUITE_METHOD={setting!r}: {entry!r} is not file=method; "
                "write e.g. 'backprop;callbacks/reduce_lr_on_plateau_test.py=dfa'.")
        per_file[name.strip()] = method.strip()
    for method in [default, *per_file.values()]:
        credit.get(method)  # an unknown name fails here, with the valid names
    return default, per_file


DEFAULT_METHOD, FILE_METHODS = _methods(os.environ.get("CREDIT_KERAS_SUITE_METHOD", ""))
_current = {"method": DEFAULT_METHOD}  # the method of the test that runs

# (module, attribute, credit's class): every place the test modules import them from.
# ``Functional`` is what credit.Model(inputs, outputs) returns, and functional_test.py
# builds its models with ``Functional(...)`` directly.
_SUBSTITUTES = [
    (keras_models, "Model", credit.Model),
    (keras_models, "Sequential", credit.Sequential),
    (keras_models, "Functional", credit.model.FunctionalModel),
    (keras_model_module, "Model", credit.Model),
    (keras_functional_module, "Functional", credit.model.FunctionalModel),
    (keras_sequential_module, "Sequential", credit.Sequential),
]

# Names a test module keeps as Keras's. sequential_test.py checks the class of the
# functional graph a Sequential builds inside itself (``type(model._functional) ==
# Functional``): Keras builds that with its own class for credit.Sequential too, and
# credit trains the Sequential, not the inner graph.
_KEEP = {"sequential_test.py": {"Functional"}}


def _default_method_compile(compile_):
    @functools.wraps(compile_)
    def compile(self, *args, method=None, **kwargs):
        if method is None:
            method = _current["method"]
        return compile_(self, *args, method=method, **kwargs)

    return compile


def _keras_conftest():
    """What Keras's test modules import from Keras's repository conftest (not shipped)."""
    module = types.ModuleType("conftest")

    def skip_if_backend(given_backend, reason):
        return pytest.mark.skipif(backend() == given_backend, reason=reason)

    module.skip_if_backend = skip_if_backend
    return module


def pytest_configure(config):
    # The markers Keras's repository conftest registers.
    config.addinivalue_line("markers", "requires_trainable_backend: Keras's marker")
    config.addinivalue_line("markers", "multi_device: Keras's marker")
    sys.modules.setdefault("conftest", _keras_conftest())
    if {DEFAULT_METHOD, *FILE_METHODS.values()} != {"backprop"}:
        credit.Model.compile = _default_method_compile(credit.Model.compile)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Import a Keras test module with credit's classes in place of Keras's.

    While the module executes, the Keras modules it imports from hold credit's classes
    (so ``from keras.src.models.model import Model`` binds credit.Model, and classes
    defined at module level subclass it); afterwards they get Keras's back, and the
    module's ``models`` name points to a copy of ``keras.src.models`` with credit's
    classes, for ``models.Sequential(...)`` inside the tests.
    """
    path = pathlib.Path(str(getattr(collector, "path", ""))).resolve()
    if not isinstance(collector, pytest.Module) or KERAS_SRC not in path.parents:
        yield
        return
    keep = _KEEP.get(path.name, set())
    substitutes = [s for s in _SUBSTITUTES if s[1] not in keep]
    saved = [(module, name, getattr(module, name)) for module, name, _ in substitutes]
    for module, name, substitute in substitutes:
        setattr(module, name, substitute)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
    test_module = collector.__dict__.get("_obj")
    if test_module is not None and getattr(test_module, "models", None) is keras_models:
        proxy = types.ModuleType(keras_models.__name__)
        proxy.__dict__.update(vars(keras_models))
        for module, name, substitute in substitutes:
            if module is keras_models:
                setattr(proxy, name, substitute)
        test_module.models = proxy


def pytest_collection_modifyitems(config, items):
    # Keras's conftest skips multi-device tests on one device; this machine has one.
    skip = pytest.mark.skip(reason="Requires multiple devices")
    for item in items:
        if "multi_device" in item.keywords:
            item.add_marker(skip)


# -- the report ------------------------------------------------------------------------

_outcomes = {}
_counts = {"credit_models": 0, "credit_train_steps": 0, "credit_points": 0}


def _counting(method, key):
    # Keras reads a model's __init__ signature (for its auto-config): keep ``self``.
    @functools.wraps(method)
    def counted(self, *args, **kwargs):
        _counts[key] += 1
        return method(self, *args, **kwargs)

    return counted


def _counting_points(bind):
    @functools.wraps(bind)
    def counted(method, *args, **kwargs):
        method = bind(method, *args, **kwargs)
        _counts["credit_points"] = max(_counts["credit_points"], len(method.points))
        return method

    return counted


def pytest_sessionstart(session):
    credit.Model.__init__ = _counting(credit.Model.__init__, "credit_models")
    credit.Model.train_step = _counting(credit.Model.train_step, "credit_train_steps")
    credit.model.bind = _counting_points(credit.model.bind)


def pytest_runtest_setup(item):
    for key in _counts:
        _counts[key] = 0
    path = pathlib.Path(str(item.path)).resolve()
    name = path.relative_to(KERAS_SRC).as_posix() if KERAS_SRC in path.parents else None
    _current["method"] = FILE_METHODS.get(name, DEFAULT_METHOD)


def _message(report):
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.strip().splitlines()[0][:300]
    if isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        return str(report.longrepr[-1])[:300]
    return str(report.longrepr).strip().splitlines()[-1][:300]


def pytest_runtest_logreport(report):
    entry = _outcomes.setdefault(report.nodeid, {"outcome": "passed",
                                                 "method": _current["method"]})
    if report.failed and entry["outcome"] != "failed":
        entry.update(outcome="failed", message=f"{report.when}: {_message(report)}")
    elif report.skipped and entry["outcome"] == "passed":
        entry.update(outcome="skipped", message=_message(report))
    if report.when == "teardown":
        entry.update(_counts)


def pytest_collectreport(report):
    if report.failed:  # a module that does not import
        _outcomes[report.nodeid] = {"outcome": "failed",
                                    "message": f"collect: {_message(report)}"}


def pytest_sessionfinish(session):
    path = os.environ.get("CREDIT_KERAS_SUITE_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(_outcomes, f, indent=1, sort_keys=True)
