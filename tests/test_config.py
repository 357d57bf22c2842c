"""Tests of :mod:`fashion_attr.config`: presets, overrides, and errors before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from fashion_attr.config import (
    PRESETS,
    ClassifierConfig,
    ConfigError,
    EvaluateConfig,
    GanConfig,
    PreprocessConfig,
    RegisterConfig,
    config_to_dict,
    load_config,
    parse_overrides,
)

ALL_MODELS = (PreprocessConfig, GanConfig, ClassifierConfig, EvaluateConfig, RegisterConfig)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_every_preset_loads_for_every_step(preset: str, model: type) -> None:
    cfg = load_config(model, preset=preset)
    assert isinstance(cfg, model)
    # The resolved config round-trips through its saved form (config.yaml beside outputs).
    again = model.model_validate(config_to_dict(cfg))
    assert again == cfg


def test_preset_values_are_the_documented_settings() -> None:
    # docs/method.md sections 3-5 and presets/*.yaml.
    paper = load_config(ClassifierConfig, preset="paper")
    assert paper.arch == "vgg16_paper"
    assert paper.lr_milestones == (6, 9, 12)
    assert paper.batch_size == 16 and paper.epochs == 15
    assert paper.deact.lambda_ == pytest.approx(1e-4) and paper.deact.every == 20
    assert paper.loss.name == "habp" and paper.loss.gamma == pytest.approx(1.2)
    cb = load_config(ClassifierConfig, preset="paper-cb")
    assert (cb.arch, cb.loss.base, cb.loss.gamma) == ("resnet50", "wce_b", 0.1)
    assert cb.deact.lambda_ == pytest.approx(1e-3)
    mnist = load_config(ClassifierConfig, preset="mnist")
    assert (mnist.deact.every, mnist.deact.lambda_, mnist.deact.sigma_p) == (1, 0.05, 2.4)
    gan = load_config(GanConfig, preset="paper")
    assert (gan.image_size, gan.base_size, gan.dc_weight, gan.lr) == (224, 7, 0.0, 1e-4)
    tiny = load_config(GanConfig, preset="tiny")
    assert (tiny.image_size, tiny.base_size) == (32, 4)


def test_set_overrides_plain_and_nested_fields() -> None:
    cfg = load_config(
        ClassifierConfig,
        preset="tiny",
        overrides=[
            "deact.lambda=0.25",
            "deact.every=7",
            "loss.name=ohem",
            "loss.ohem_ratio=0.5",
            "lr=1e-3",
            "lr_milestones=[1, 2]",
            "max_steps=11",
        ],
    )
    assert cfg.deact.lambda_ == 0.25
    assert cfg.deact.every == 7
    # Nested fields not overridden keep the preset's values (deep merge, not replace).
    assert cfg.deact.sigma_p == 1.5 and cfg.deact.enabled is True
    assert cfg.loss.name == "ohem" and cfg.loss.ohem_ratio == 0.5
    assert cfg.loss.gamma == 1.2  # from the tiny preset's loss section
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.lr_milestones == (1, 2)
    assert cfg.max_steps == 11
    assert cfg.arch == "tiny"  # untouched preset value


def test_parse_overrides_values_are_yaml() -> None:
    assert parse_overrides(["a.b=1", "c=x", "d=true", "e=", "f=[1, 2]", "g=a=b"]) == {
        "a": {"b": 1},
        "c": "x",
        "d": True,
        "e": None,
        "f": [1, 2],
        "g": "a=b",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_precedence_defaults_preset_file_set(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("train_classifier:\n  epochs: 3\n  lr: 0.2\n  deact: {every: 9}\ntrain_gan:\n")
    cfg = load_config(ClassifierConfig, preset="tiny", config_file=f, overrides=["epochs=4"])
    assert cfg.epochs == 4  # --set beats the file
    assert cfg.lr == 0.2  # the file beats the preset (0.05)
    assert cfg.deact.every == 9 and cfg.deact.lambda_ == 0.01  # file + preset merged
    assert cfg.batch_size == 32  # preset beats the default (16)
    assert cfg.momentum == 0.9  # default
    # A file may hold the step's section alone.
    g = tmp_path / "gan.yaml"
    g.write_text("epochs: 2\nmax_steps: 5\n")
    gan = load_config(GanConfig, preset="tiny", config_file=g)
    assert (gan.epochs, gan.max_steps, gan.z_dim) == (2, 5, 32)


def test_file_with_wrong_type_names_field_file_line_and_allowed(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train_classifier:\n  batch_size: 8\n  loss:\n    name: hinge\n  epochs: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(ClassifierConfig, preset="tiny", config_file=f)
    text = str(info.value)
    assert "loss.name" in text and "'hinge'" in text
    for allowed in ("'ce'", "'focal'", "'ohem'", "'wce_b'", "'asl'", "'habp'"):
        assert allowed in text
    assert f"{f}, line 4" in text  # loss.name sits on line 4
    assert "epochs" in text and "valid integer" in text and f"{f}, line 5" in text


def test_file_with_unknown_key_lists_the_allowed_fields(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train_classifier:\n  deact:\n    lamda: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(ClassifierConfig, config_file=f)
    text = str(info.value)
    assert "deact.lamda" in text and "unknown field" in text
    for allowed in ("lambda", "every", "sigma_p", "enabled", "threshold"):
        assert allowed in text
    assert f"{f}, line 3" in text
    with pytest.raises(ConfigError, match=r"epoch: unknown field.*epochs"):
        load_config(GanConfig, overrides=["epoch=3"])


def test_constraint_and_cross_field_errors() -> None:
    with pytest.raises(ConfigError, match=r"batch_size: Input should be greater than or equal"):
        load_config(ClassifierConfig, overrides=["batch_size=0"])
    with pytest.raises(ConfigError, match=r"lr_milestones must be increasing"):
        load_config(ClassifierConfig, overrides=["lr_milestones=[9, 6]"])
    with pytest.raises(ConfigError, match=r"image_size=30 must be base_size=4 times a power"):
        load_config(GanConfig, preset="tiny", overrides=["image_size=30"])
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'.*tiny"):
        load_config(GanConfig, preset="huge")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(GanConfig, config_file=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_gan: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(GanConfig, config_file=bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(GanConfig, config_file=scalar)


def test_configs_are_frozen() -> None:
    cfg = load_config(GanConfig, preset="tiny")
    with pytest.raises(Exception, match="frozen"):
        cfg.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("train_gan", []),
        ("train_classifier", ["--generator", "g.pt"]),
        ("evaluate", ["--model", "m.pt"]),
    ],
)
def test_cli_exits_2_with_message_before_any_work(
    module: str, extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    main = importlib.import_module(f"fashion_attr.steps.{module}").main
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"{module}:\n  bogus_field: 1\n")
    out = tmp_path / "out"
    argv = ["--data", str(tmp_path / "no-such-dataset"), "--out", str(out), "--config", str(bad)]
    code = main([*argv, *extra, "--preset", "tiny"])
    err = capsys.readouterr().err
    assert code == 2
    assert "bogus_field" in err and "unknown field" in err and "line 2" in err
    # Config errors come first: the missing dataset was never opened, nothing was written.
    assert "no-such-dataset" not in err
    assert not out.exists()
    code = main(["--data", "x", "--out", str(out), *extra, "--set", "batch_size=-1"])
    assert code == 2
    assert "batch_size" in capsys.readouterr().err
    assert not out.exists()
