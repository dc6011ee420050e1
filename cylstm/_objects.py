"""The objects layers and ``compile()`` take by name, instance or config --
initializers, losses, optimizers, metrics, activations, regularizers, constraints --
resolved by one :class:`Registry` each.

A registry knows two tables: the *names* ``get("...")`` accepts (folded: lower case,
say) and the *classes* a ``{"class_name": ..., "config": ...}`` config may name; it
names cylstm's own classes only, so a config read from a file can never reach any
other class.  Each module keeps its public ``get`` / ``serialize`` / ``deserialize``,
with what is particular to it (a metric named after the string given, the Keras
spelling ``"l1_l2"``), and hands the lookups and the errors to its registry.

Errors: an unknown name is a ``ValueError`` listing the known ones; an object
without a config is a ``TypeError``; a malformed config is ``config_error``:
``TypeError`` for the objects ``compile()`` and the layers are given in code
(initializers, losses, optimizers, metrics), ``ValueError`` for the regularizers and
constraints, which reach it mostly from saved files (as the other file errors).
"""

__all__ = ["Registry"]


def _identity(name):
    return name


class Registry:
    """Names and classes of one kind of object, and its errors.

    Parameters
    ----------
    kind : str
        ``"initializer"``, ``"loss"``, ...: the word the messages use.
    base : type or None
        The class whose instances :meth:`serialize` accepts (None: no configs).
    classes : dict
        ``class_name`` -> class: what a config may name.
    names : dict
        Folded name -> what :meth:`lookup` returns (a class, or for activations
        the canonical name).
    valid_names : sequence of str
        The names the messages list.
    fold : callable, default ``str.lower``
        Applied to a name before it is looked up in ``names``.
    builtin_only : bool
        :meth:`serialize` accepts only the classes in ``classes`` (not subclasses
        of ``base`` defined elsewhere, which no config could name back).
    config_names : bool
        A config's ``class_name`` may also be one of ``names``.
    config_error : type
        ``TypeError`` or ``ValueError``: what a malformed config raises.
    unknown : callable, optional
        ``unknown(name)`` -> the exception for an unknown name, where the
        default (``unknown <kind> 'name'; valid names: ...``) does not fit.
    """

    def __init__(self, kind, base, classes, names, valid_names, *, fold=str.lower,
                 builtin_only=False, config_names=False, config_error=TypeError, unknown=None):
        self.kind = kind
        self.base = base
        self.classes = classes
        self.names = names
        self.valid_names = tuple(valid_names)
        self.fold = _identity if fold is None else fold
        self.builtin_only = builtin_only
        self.config_names = config_names
        self.config_error = config_error
        self._unknown = unknown

    def unknown(self, name):
        """The ``ValueError`` for a name this registry does not know."""
        if self._unknown is not None:
            return self._unknown(name)
        return ValueError(
            f"unknown {self.kind} {name!r}; valid names: {', '.join(self.valid_names)}")

    def lookup(self, name):
        """What ``name`` (folded) stands for; raises :meth:`unknown` if nothing."""
        key = self.fold(name)
        try:
            found = self.names.get(key)
        except TypeError:  # unhashable (a list given as a name): no name at all
            found = None
        if found is None:
            raise self.unknown(name)
        return found

    def serialize(self, obj):
        """``{"class_name": ..., "config": ...}`` of ``obj``."""
        if not isinstance(obj, self.base) or (
                self.builtin_only and self.classes.get(type(obj).__name__) is not type(obj)):
            what = (f"cylstm's built-in {self.kind}s" if self.builtin_only
                    else f"{self.base.__module__}.{self.base.__name__} objects")
            raise TypeError(f"{self.kind} {obj!r} cannot be saved: only {what} have a config")
        return {"class_name": type(obj).__name__, "config": obj.get_config()}

    def deserialize(self, config):
        """The object a :meth:`serialize` config names, built from ``classes`` only."""
        if not isinstance(config, dict) or "class_name" not in config:
            raise self.config_error(
                f"{self.kind} config must be a dict with 'class_name'; got {config!r}")
        name = config["class_name"]
        cls = self.classes.get(name) if isinstance(name, str) else None
        if cls is None and self.config_names:
            cls = self.names.get(self.fold(str(name)))
        if cls is None:
            if self.config_names or self._unknown is not None:
                raise self.unknown(name)
            raise ValueError(f"unknown {self.kind} class {name!r}; valid: {sorted(self.classes)}")
        cfg = config.get("config") or {}
        if not isinstance(cfg, dict):
            raise self.config_error(f"{self.kind} config of {name!r} must be a dict; got {cfg!r}")
        try:
            return cls.from_config(dict(cfg))
        except TypeError as e:
            raise self.config_error(f"invalid config for {self.kind} {name!r}: {e}") from e
