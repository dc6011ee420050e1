"""The get / serialize / deserialize contracts of every object registry
(cylstm/_objects.py), in one place: which error each kind of bad input raises."""
import pytest

from cylstm import (
    activations,
    constraints,
    initializers,
    losses,
    metrics,
    optimizers,
    regularizers,
)

# module, a name get() knows, the class it gives, what a malformed config raises
KINDS = [
    (initializers, "glorot_uniform", initializers.GlorotUniform, TypeError),
    (losses, "mse", losses.MeanSquaredError, TypeError),
    (optimizers, "adam", optimizers.Adam, TypeError),
    (metrics, "mae", metrics.MeanAbsoluteError, TypeError),
    (regularizers, "l2", regularizers.L2, ValueError),
    (constraints, "max_norm", constraints.MaxNorm, ValueError),
]
IDS = [k[0].__name__.rsplit(".", 1)[1] for k in KINDS]


@pytest.mark.parametrize("module,name,cls,config_error", KINDS, ids=IDS)
def test_get_by_name_and_unknown_names(module, name, cls, config_error):
    assert type(module.get(name)) is cls
    with pytest.raises(ValueError, match="unknown .*'no_such_thing'"):
        module.get("no_such_thing")


@pytest.mark.parametrize("module,name,cls,config_error", KINDS, ids=IDS)
def test_config_round_trip_and_malformed_configs(module, name, cls, config_error):
    obj = module.get(name)
    config = {"class_name": cls.__name__, "config": obj.get_config()}
    if hasattr(module, "serialize"):
        assert module.serialize(obj) == config
    back = module.get(config)
    assert type(back) is cls and back.get_config() == obj.get_config()
    for bad in ({"config": {}}, {"class_name": cls.__name__, "config": [1, 2]},
                {"class_name": cls.__name__, "config": {"no_such_argument": 1}}):
        with pytest.raises(config_error):
            module.get(bad)
    with pytest.raises(ValueError, match="'NoSuchClass'"):
        module.get({"class_name": "NoSuchClass", "config": {}})


@pytest.mark.parametrize("module", [initializers, losses, optimizers, regularizers,
                                    constraints], ids=lambda m: m.__name__)
def test_objects_without_a_config_cannot_be_saved(module):
    with pytest.raises(TypeError, match="cannot be saved"):
        module.serialize(object())


@pytest.mark.parametrize("module", [initializers, losses], ids=lambda m: m.__name__)
def test_only_built_in_classes_are_saved(module):
    """A subclass defined elsewhere has a config no file could name back."""
    base = initializers.Zeros if module is initializers else losses.MeanSquaredError

    class Mine(base):
        pass

    with pytest.raises(TypeError, match="built-in"):
        module.serialize(Mine())


def test_configs_may_name_classes_by_their_get_names_where_keras_allows():
    assert type(initializers.deserialize({"class_name": "zeros"})) is initializers.Zeros
    assert type(optimizers.deserialize({"class_name": "adam"})) is optimizers.Adam
    with pytest.raises(ValueError, match="unknown loss class 'mse'"):
        losses.deserialize({"class_name": "mse"})


def test_activations_are_names():
    assert activations.get(None) == activations.get("Identity") == "linear"
    assert activations.serialize(activations.relu) == "relu"
    for bad in ("swishy", [1]):
        with pytest.raises(ValueError, match="unknown activation"):
            activations.get(bad)
