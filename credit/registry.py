"""Method names: register, look up, list.

Example:
    >>> credit.available()                               # doctest: +SKIP
    ['backprop', 'direct_feedback_alignment', 'feedback_alignment', 'kickback', ...]
    >>> credit.get("DFA")                                # doctest: +SKIP
    DirectFeedbackAlignment(seed=None, scale=None)
"""

import difflib

from credit.signal import ErrorSignal

_METHODS = {}  # canonical name -> (class, default keyword arguments)
_NAMES = {}  # canonical name or alias (lower case) -> canonical name


def _normalise(name):
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def register(cls=None, *, name=None, aliases=None, defaults=None):
    """Register an :class:`ErrorSignal` subclass under its name and aliases.

    Usable as a plain decorator. ``name``/``aliases`` default to the class attributes.
    With ``defaults``, the name stands for the class with those keyword arguments (a
    preset such as ``"cdni"`` = synthetic gradients with ``conditioned=True``).

    Example:
        >>> @credit.register                             # doctest: +SKIP
        ... class Zero(credit.ErrorSignal):
        ...     name = "zero"
        ...     def signals(self, trace): ...
    """

    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, ErrorSignal)):
            raise TypeError(f"register expects a subclass of credit.ErrorSignal, got {cls!r}.")
        canonical = _normalise(name or cls.name or cls.__name__)
        names = [canonical] + [_normalise(a) for a in (aliases or cls.aliases)]
        for n in names:
            owner = _NAMES.get(n)
            if owner is not None and owner != canonical:
                raise ValueError(f"method name {n!r} is already registered for "
                                 f"{owner!r}; choose another name.")
        if not defaults:
            cls.name = canonical
        _METHODS[canonical] = (cls, dict(defaults or {}))
        for n in names:
            _NAMES[n] = canonical
        return cls

    return decorate(cls) if cls is not None else decorate


def available(stateful=False, dense_chains=False, ordered=False):
    """Sorted canonical names of the registered methods.

    Args:
        stateful: also list the methods that train only models with a stateful
            recurrent layer (synthetic gradients through time: a class attribute
            ``stateful_only = True``). By default they are left out, so that a sweep
            over ``available()`` gets methods that train any model.
        dense_chains: also list the methods that train only chains of Dense layers
            (PEPITA: a class attribute ``dense_chains_only = True``).
        ordered: also list the methods that need the training examples in one order
            every epoch (F³, which keys each example's stored error by its position:
            a class attribute ``ordered_only = True``).
    """
    return sorted(n for n, (cls, _) in _METHODS.items()
                  if (stateful or not getattr(cls, "stateful_only", False))
                  and (dense_chains or not getattr(cls, "dense_chains_only", False))
                  and (ordered or not getattr(cls, "ordered_only", False)))


def aliases():
    """A dict from every accepted name (aliases included) to its canonical name."""
    return dict(_NAMES)


def _lookup(name):
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string, one of {available()}; got "
                        f"{name!r} of type {type(name).__name__}.")
    key = _normalise(name)
    if key in _NAMES:
        return _METHODS[_NAMES[key]]
    close = difflib.get_close_matches(key, list(_NAMES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    valid = ", ".join(f"{n!r}" for n in available(stateful=True, dense_chains=True,
                                                     ordered=True))
    alias_list = ", ".join(f"{a!r}" for a in sorted(_NAMES) if a not in _METHODS)
    raise ValueError(f"unknown credit-assignment method {name!r}.{hint} Valid names: "
                     f"{valid} (aliases: {alias_list}).")


def _make(cls, defaults):
    return cls(**defaults)


def get(identifier):
    """Resolve ``identifier`` to an :class:`ErrorSignal` instance.

    Args:
        identifier: None (backprop); a name or alias, case-insensitive ("dfa");
            a dict from ``method.get_config()``; an ErrorSignal subclass; or an instance
            (returned as is).

    Raises:
        ValueError: unknown name (the message lists the valid names) or bad config.
        TypeError: an identifier of another type.

    Example:
        >>> credit.get("fa").name                        # doctest: +SKIP
        'feedback_alignment'
    """
    if identifier is None:
        return _make(*_lookup("backprop"))
    if isinstance(identifier, ErrorSignal):
        return identifier
    if isinstance(identifier, str):
        return _make(*_lookup(identifier))
    if isinstance(identifier, dict):
        if "name" not in identifier:
            raise ValueError(f"a method config needs a 'name' key (one of "
                             f"{available(stateful=True)}); got keys {sorted(identifier)}. "
                             "Use method.get_config().")
        cls, defaults = _lookup(identifier["name"])
        config = {**defaults, **{k: v for k, v in identifier.items() if k != "name"}}
        try:
            return cls.from_config(config)
        except TypeError as err:
            raise ValueError(f"bad config for method {cls.name!r}: {err}") from None
    if isinstance(identifier, type) and issubclass(identifier, ErrorSignal):
        return identifier()
    raise TypeError(
        f"a credit-assignment method must be None, a name (one of "
        f"{available(stateful=True)}), a config dict, an ErrorSignal subclass or instance; "
        f"got {identifier!r} of type {type(identifier).__name__}.")
