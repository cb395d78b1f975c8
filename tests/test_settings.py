"""The declarative settings: one declaration per setting, validated from every source."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest

from digitlab.data.preprocess import METHODS
from digitlab.errors import ConfigError
from digitlab.models import ACTIVATIONS, INITS, MODELS, REDUCTIONS, build_model
from digitlab.optim import OPTIMIZERS
from digitlab.settings import (
    COMMAND_LINE,
    MAX_HIDDEN_LAYERS,
    MAX_HIDDEN_UNITS,
    SPECS,
    Settings,
    add_options,
    markdown_table,
    options_given,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"momentum": "x"}, "momentum = 'x' (exp.toml): expected a finite number"),
        ({"hidden": 5}, "hidden = 5 (exp.toml): expected a list of whole numbers"),
        ({"model": "logistic", "classes": ["a", "b"]}, "classes = ['a', 'b'] (exp.toml)"),
        ({"seed": -1}, "seed = -1 (exp.toml): expected a whole number (>= 0"),
        ({"seed": 1.5}, "seed = 1.5 (exp.toml): expected a whole number"),
        ({"epochs": True}, "epochs = True (exp.toml): expected a whole number"),
        ({"shuffle": 1}, "shuffle = 1 (exp.toml): expected true or false"),
        ({"lr": float("nan")}, "lr = nan (exp.toml): expected a finite number (> 0"),
        ({"l2": float("inf")}, "l2 = inf (exp.toml)"),
        ({"holdout": 1.0}, "holdout = 1.0 (exp.toml): expected a finite number (>= 0, < 1)"),
        ({"activation": "swish"}, "expected one of tanh, sigmoid, relu"),
        ({"hidden": [10**7]}, f"<= {MAX_HIDDEN_UNITS}"),
        ({"hidden": [8] * (MAX_HIDDEN_LAYERS + 1)}, f"at most {MAX_HIDDEN_LAYERS} entries"),
        ({"hidden": [[[[[[1]]]]]]}, "hidden = [[[...]]] (exp.toml)"),
        ({"batch": "lots"}, "batch = 'lots' (exp.toml): expected full, sgd"),
        ({"batch": True}, "batch = True"),
        ({"eval_every": 1.5}, "eval_every = 1.5"),
        ({"monitor": "bogus"}, "monitor = 'bogus' (exp.toml): expected one of val_loss"),
        ({"optimizer": "adagrad"}, "optimizer = 'adagrad' (exp.toml): expected one of sgd"),
        ({"bogus": 1, "other": 2}, "exp.toml: unknown setting(s) bogus, other"),
    ],
)
def test_bad_values_name_the_setting_the_value_and_the_source(values, words):
    with pytest.raises(ConfigError) as err:
        Settings.from_dict(values, where="exp.toml")
    message = str(err.value)
    assert words in message and "\n" not in message


def test_cross_field_rules_say_where_the_settings_came_from():
    with pytest.raises(ConfigError, match=r"two different classes .*model from command line"):
        Settings.merge([("a.toml", {"lr": 0.1}), (COMMAND_LINE, {"model": "logistic"})])
    with pytest.raises(ConfigError, match="early_stopping needs a validation split"):
        Settings.from_dict({"early_stopping": 3, "holdout": 0.0})
    with pytest.raises(ConfigError, match="applies to the logistic model only"):
        Settings.from_dict({"model": "softmax", "classes": [2, 3]})
    with pytest.raises(ConfigError, match="give epochs or steps"):
        Settings.from_dict({"epochs": None, "steps": None})


def test_command_line_text_is_parsed_by_the_declared_type():
    s = Settings.merge(
        [
            ("base.toml", {"model": "mlp", "lr": 1}),
            (COMMAND_LINE, {"hidden": "256, 128", "momentum": "0.5", "anneal_T": "none",
                            "batch": "0.25", "eval_every": "100", "split": "seed"}),
        ]
    )  # fmt: skip
    assert s.hidden == [256, 128] and s.momentum == 0.5 and s.anneal_T is None
    assert s.batch == 0.25 and s.eval_every == 100 and s.split == "seed"
    assert s.lr == 1.0 and isinstance(s.lr, float)  # an int where a float is declared: widened
    with pytest.raises(ConfigError, match=r"^option --epochs '2.5': expected a whole number"):
        Settings.merge([(COMMAND_LINE, {"epochs": "2.5"})])
    with pytest.raises(ConfigError, match=r"^option --lr 'inf': expected a finite number"):
        Settings.merge([(COMMAND_LINE, {"lr": "inf"})])


def test_direct_construction_validates_and_resolves_per_model_defaults():
    mlp, softmax = Settings(model="mlp"), Settings(model="softmax")
    assert (mlp.lr, mlp.momentum) == (SPECS["lr"].by_model["mlp"], 0.9)
    assert (softmax.lr, softmax.momentum) == (0.5, 0.0)
    assert Settings(model="mlp", lr=0.3).lr == 0.3
    with pytest.raises(ConfigError, match="momentum = 1.0"):
        Settings(momentum=1.0)
    assert Settings.from_dict(mlp.to_dict()) == mlp  # a run's config reloads unchanged


def test_deeply_nested_toml_is_one_line(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("hidden = " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError) as err:
        Settings.from_toml(deep)
    assert str(deep) in str(err.value) and "\n" not in str(err.value)
    table = tmp_path / "table.toml"
    table.write_text("[train]\nmodel = 'mlp'\n[train.hidden]\na = 1\n")
    with pytest.raises(ConfigError, match=r"hidden = \{'a': 1\} \(.*table.toml\)"):
        Settings.from_toml(table)


def test_choices_come_from_the_registries(monkeypatch):
    assert SPECS["model"].choice_names() == list(MODELS)
    assert SPECS["activation"].choice_names() == list(ACTIVATIONS)
    assert SPECS["init"].choice_names() == list(INITS)
    assert SPECS["reduction"].choice_names() == list(REDUCTIONS)
    assert SPECS["preprocess"].choice_names() == list(METHODS)
    assert SPECS["optimizer"].choice_names() == list(OPTIMIZERS)
    monkeypatch.setitem(ACTIVATIONS, "gelu", "a new activation")
    assert Settings(activation="gelu").activation == "gelu"  # one registry entry, no other edit


def test_no_module_retypes_a_registry_list():
    """The CLI, runner, report and experiments name no list of models, activations, ..."""
    lists = [tuple(r) for r in (MODELS, ACTIVATIONS, INITS, METHODS, REDUCTIONS)]
    files = ["cli.py", "runner.py", "settings.py", "runfiles.py", "optim/lbfgs.py"]
    for name in files:
        text = (ROOT / "src" / "digitlab" / name).read_text()
        for names in lists:
            pattern = r",\s*".join(f'"{n}"' for n in names[:2])
            assert not re.search(pattern, text), (name, names)


def test_options_are_generated_with_defaults_in_help():
    parser = argparse.ArgumentParser(prog="x")
    add_options(parser)
    text = parser.format_help()
    for spec in SPECS.values():
        assert spec.flag in text
    flat = " ".join(text.split())
    assert f"(default: {SPECS['lr'].default_text()})" in flat
    assert "(default: logistic 0.1, softmax 0.5, mlp 0.1)" in flat
    ns = parser.parse_args(["--no-shuffle", "--hidden", "32", "--seed-split"])
    assert options_given(ns) == {"shuffle": False, "hidden": "32", "split": "seed"}


def test_readme_settings_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme


def test_models_build_themselves_from_settings():
    """``Model.from_settings`` gives the model ``build_model`` gives for the same config."""
    rng = lambda: np.random.default_rng([0, 1])  # noqa: E731
    cases = [
        (Settings(model="mlp", hidden=[7, 5], activation="relu", l2=0.1), {"hidden": [7, 5],
         "activation": "relu", "n_classes": 10, "l2": 0.1}),
        (Settings(model="softmax", bias_column=True), {"n_classes": 10, "bias": False}),
        (Settings(model="logistic", classes=[2, 3], init="normal"), {"init": "normal"}),
    ]  # fmt: skip
    for s, config in cases:
        built = MODELS[s.model].from_settings(s, 12, 10, rng())
        ref = build_model({"kind": s.model, "n_features": 12, "rng": rng(), **config})
        assert built.config() == ref.config()
        for k, v in ref.params.items():
            np.testing.assert_array_equal(built.params[k], v)
        draw = type(built).image_weights
        assert draw in built.params and built.params[draw].shape[0] == 12
    assert MODELS["softmax"].convex and not MODELS["mlp"].convex


def test_optimizer_config_follows_the_registry():
    s = Settings(optimizer="sgd", momentum=0.5, beta1=0.8)
    cls = OPTIMIZERS["sgd"]
    assert s.optimizer_config() == {
        "name": "sgd",
        **{k: getattr(s, k) for k in cls.hyperparameters},
    }


def test_unset_hyperparameters_take_the_optimizers_defaults():
    for name, cls in OPTIMIZERS.items():
        s = Settings(model="softmax", optimizer=name)
        expected = dict(cls.hyperparameters)
        if name == "sgd":
            expected["momentum"] = 0.0  # sgd: the per-model default
        assert s.optimizer_config() == {"name": name, **expected}
    assert Settings(model="mlp").momentum == 0.9
    assert Settings(model="mlp", optimizer="rmsprop").momentum == OPTIMIZERS[
        "rmsprop"
    ].hyperparameters.get("momentum", 0.0)
    assert Settings(optimizer="adamw", weight_decay=0.0).weight_decay == 0.0  # given: kept


def test_every_optimizer_trains_from_the_command_line(tmp_path, capsys):
    import json

    from digitlab.cli import main

    for name in OPTIMIZERS:
        lr = "0.5" if name in ("sgd", "nesterov") else "0.001"
        args = ["train", "--dataset", "mnist-5k", "--optimizer", name, "--lr", lr, "--epochs", "1",
                "--quiet", "--out", str(tmp_path / name)]  # fmt: skip
        assert main(args) == 0, capsys.readouterr().err
        (metrics,) = (tmp_path / name).glob("*/*/metrics.json")
        assert json.loads(metrics.read_text())["test_acc"] > 0.8, name


def test_oversized_or_non_file_configs_are_refused(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 2**21 + "\n")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        Settings.from_toml(big)
    with pytest.raises(ConfigError, match="no such config file"):
        Settings.from_toml(tmp_path)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.from_toml(binary)


def test_elastic_settings_are_declared_validated_and_need_augment():
    s = Settings.merge(
        [(COMMAND_LINE, {"augment": True, "elastic_alpha": "34", "elastic_sigma": "4.5"})]
    )
    assert (s.elastic_alpha, s.elastic_sigma) == (34.0, 4.5)
    assert (Settings().elastic_alpha, Settings().elastic_sigma) == (0.0, 4.0)  # off by default
    for values, words in (
        ({"elastic_alpha": "-1"}, "option --elastic-alpha '-1': expected a finite number (>= 0"),
        ({"elastic_alpha": "nan"}, "option --elastic-alpha 'nan'"),
        ({"elastic_sigma": "0"}, "option --elastic-sigma '0': expected a finite number (> 0"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)):
            Settings.merge([(COMMAND_LINE, {"augment": True, **values})])
    with pytest.raises(ConfigError, match="elastic_alpha distorts augmented batches"):
        Settings.merge([("a.toml", {"elastic_alpha": 34.0})])
    parser = argparse.ArgumentParser()
    add_options(parser)
    given = options_given(parser.parse_args(["--augment", "--elastic-alpha", "34"]))
    assert given == {"augment": True, "elastic_alpha": "34"}
