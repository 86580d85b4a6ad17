"""PretrainConfig: every pretraining option resolved (given > run.json > recipe) and checked at once."""

import dataclasses

import pytest

from kinetics.errors import KineticsInputError  # the base both packages raise (number() raises it)
from ssl_rcc.pretrain_config import PretrainConfig
from ssl_rcc.recipes import RECIPES


def resolve(given, previous=None):
    return PretrainConfig.resolve({"method": "simclr"} | given, previous or {}, cuda=False, where="run")


def test_given_options_win_then_the_run_then_the_recipe():
    config = resolve({"lr": 0.01, "patch": 16})
    assert config.recipe == "cpu" and config.lr == 0.01 and config.patch == [16, 16, 16]
    assert config.batch_size == RECIPES["cpu"]["batch_size"] and config.world == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    previous = {"recipe": "cpu", "batch_size": 4, "temperature": 0.3, "crop_scale": [0.8, 1.0]}
    resumed = resolve({}, previous)
    assert (resumed.batch_size, resumed.temperature, resumed.crop_scale) == (4, 0.3, [0.8, 1.0])
    # the run's own value given in another form (a tuple, as fire passes "0.8,1") is the same value
    assert resolve({"crop_scale": (0.8, 1)}, previous).crop_scale == [0.8, 1.0]


def test_every_bad_option_is_one_sentence_before_anything_runs():
    previous = {"recipe": "cpu", "batch_size": 4, "intensity": 0.02}
    cases = [({"batch_size": 8}, previous, "run: --batch-size 8 differs from the run's 4"),
             ({"intensity": 0.1}, previous, "run: --intensity 0.1 differs from the run's 0.02"),
             ({"crop_scale": "2,1"}, None, "crop_scale: 2 is larger than 1"),
             ({"architecture": "resnet7"}, None, "architecture: unknown 'resnet7'"),
             ({"intensity": "x"}, None, "intensity"),
             ({"gamma": [0.5]}, None, "gamma: give two exponents"),
             ({"gamma": 2}, None, "gamma: give two exponents"),  # fire passes --gamma 2 as a number
             ({"spacing": 3}, {"spacing_mm": 1.5}, "run: --spacing 3 differs from the run's 1.5"),
             ({"normalise_target": "no"}, None, "normalise_target: 'no' is neither true nor false"),
             ({"max_steps": -1}, None, "max_steps"),
             ({"epochs": 0}, None, "epochs"),
             ({"augment": "gpu"}, None, "augment: 'gpu' is not one of auto, loader, device")]
    for given, run, message in cases:
        with pytest.raises(KineticsInputError, match=message):
            resolve(given, run)


def test_one_table_of_options_for_the_function_the_command_line_and_the_config():
    import inspect

    from ssl_rcc.__main__ import pretrain as command
    from ssl_rcc.recipes import OPTIONS

    params = inspect.signature(command).parameters
    assert set(OPTIONS) <= set(params) and all(params[k].default == o.default for k, o in OPTIONS.items())
    assert all(f"{k}: {o.help.split()[0]}" in command.__doc__ for k, o in OPTIONS.items())  # fire's help
    with pytest.raises(KineticsInputError, match="unknown option 'learning_rate'; the options are recipe, architecture"):
        resolve({"learning_rate": 0.1})
    config = resolve({"spacing": 3, "max_time": 2.5, "gamma": "0.8,1.2"})  # the names a user types
    assert (config.spacing_mm, config.max_time_min, config.gamma) == (3.0, 2.5, [0.8, 1.2])
