"""Configuration validation: every bad value is named with its key and the allowed range."""

from pathlib import Path

import pytest

from fluoscan.acquisition.config import ConfigError, FluoscanConfig, HomingPolicy, load_config, parse_config
from fluoscan.config import CONFIG_DIR, shipped_config


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
def test_shipped_configs_load(name):
    config = load_config(shipped_config(name))
    assert isinstance(config, FluoscanConfig)


def test_demo_config_meets_demo_size():
    config = load_config(shipped_config("simulated-mouse"))
    assert config.scan.n_lines >= 100
    assert config.spectrometer.n_points == 64
    assert config.laser.driver == "simulated"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"scan": {"n_lines": 0}}, r"scan\.n_lines = 0: Input should be greater than or equal to 1"),
        ({"scan": {"step_mm": -1}}, r"scan\.step_mm = -1: Input should be greater than 0"),
        ({"scan": {"exposure_s": "long"}}, r"scan\.exposure_s = 'long': Input should be a valid number"),
        ({"scan": {"n_line": 10}}, r"scan\.n_line: unknown key"),
        ({"laser": {"power_mw": 0}}, r"laser\.power_mw = 0: Input should be greater than 0"),
        ({"laser": {"wavelength_nm": 5000}}, r"laser\.wavelength_nm = 5000: Input should be less than or equal to 1600"),
        ({"stage": {"limits_mm": [10, 0]}}, r"limits_mm must be \[min, max\] with min < max, got \[10\.0, 0\.0\]"),
        ({"stage": {"homing": "maybe"}}, r"stage\.homing = 'maybe': Input should be 'home' or 'require'"),
        (
            {"scan": {"y_start_mm": 0, "step_mm": 1, "n_lines": 20}, "stage": {"limits_mm": [0, 10]}},
            r"scan positions 0\.\.19 mm leave stage\.limits_mm \[0\.0, 10\.0\]",
        ),
        ({"spectrometer": {"driver": "replay"}}, r"driver \"replay\" needs replay_store"),
        ({"spectrometer": {"wavelength_range_nm": [900, 700]}}, r"wavelength_range_nm must be \[min, max\]"),
        ({"unmixing": {"components": [{"name": "a", "sparsity": 1.5}]}}, r"sparsity must be in \[0, 1\], got 1\.5"),
        ({"unmixing": {"components": [{"name": "a", "sparsity": "high"}]}}, r"sparsity must be a number in \[0, 1\], \"auto\""),
        ({"unmixing": {"components": [{"name": "a"}, {"name": "a"}]}}, r"component names must be unique"),
        ({"unmixing": {"components": [{"sparsity": 0.5}]}}, r"unmixing\.components\.0\.name: missing required key"),
        ({"unmixing": {"loss": "l1"}}, r"loss must be \"frobenius\" or \"kullback-leibler\", got 'l1'"),
    ],
)
def test_invalid_config_names_key_and_value(data, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config(data, "test.toml")


def test_invalid_config_names_source():
    with pytest.raises(ConfigError, match=r"^invalid configuration in test\.toml:"):
        parse_config({"scan": {"n_lines": 0}}, "test.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[scan\nn_lines = 3", r"is not valid TOML"),
        ("[scan]\nn_lines = -3\n", r"scan\.n_lines = -3"),
    ],
)
def test_load_config_rejects_bad_files(tmp_path: Path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"configuration file not found: .*nope\.toml"):
        load_config(tmp_path / "nope.toml")


def test_positions_follow_raster():
    config = parse_config({"scan": {"y_start_mm": 2.0, "step_mm": 0.5, "n_lines": 4}})
    assert config.scan.positions_mm() == [2.0, 2.5, 3.0, 3.5]
    assert config.scan.y_stop_mm == 3.5


def test_round_trip_through_dict():
    config = load_config(shipped_config("simulated-mouse"))
    again = parse_config(config.to_dict())
    assert again == config
    assert again.stage.homing is HomingPolicy.HOME
