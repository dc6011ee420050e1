"""Configs of the small objects layers take by name or instance (regularizers,
constraints): ``{"class_name": ..., "config": ...}``, naming cylstm's own classes only."""

__all__ = ["deserialize", "serialize"]


def serialize(obj, base, kind):
    """``{"class_name": ..., "config": ...}`` of ``obj`` (None gives None); ``base``
    the class whose instances have a config, ``kind`` its name in messages."""
    if obj is None:
        return None
    if not isinstance(obj, base):
        raise TypeError(f"{kind} {obj!r} cannot be saved: only "
                        f"{base.__module__}.{base.__name__} objects have a config")
    return {"class_name": type(obj).__name__, "config": obj.get_config()}


def deserialize(config, classes, kind, unknown):
    """The object a :func:`serialize` config names, built from ``classes`` only;
    ``unknown(name)`` is the error for a name not among them."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"a {kind} config must be a dict with 'class_name'; got {config!r}")
    name = config["class_name"]
    cls = classes.get(name)
    if cls is None:
        raise unknown(name)
    cfg = config.get("config") or {}
    if not isinstance(cfg, dict):
        raise ValueError(  # noqa: TRY004 - a bad file or config, as the other config errors
            f"{kind} config of {name!r} must be a dict; got {cfg!r}")
    try:
        return cls.from_config(dict(cfg))
    except TypeError as e:
        raise ValueError(f"invalid config for {kind} {name!r}: {e}") from e
