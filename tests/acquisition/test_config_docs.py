"""docs/configuration.md is generated from the configuration models and must match them."""

import subprocess
import sys
from pathlib import Path

import pytest

from fluoscan.acquisition import config_docs
from fluoscan.acquisition.config import FluoscanConfig, HomingPolicy, StageConfig, model_at

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def all_keys(model=FluoscanConfig, prefix=""):
    """Yield (section key, field name) for every leaf key of the configuration."""
    for name, field in model.model_fields.items():
        nested = config_docs.nested_model(field.annotation)
        key = f"{prefix}.{name}" if prefix else name
        if nested is None:
            yield prefix, name
        else:
            yield from all_keys(nested, key + ("[]" if nested.__name__ == "ComponentConfig" else ""))


def test_committed_page_matches_models(page):
    assert COMMITTED.read_text(encoding="utf-8") == page, (
        "docs/configuration.md is out of date: run python -m fluoscan.acquisition.config_docs"
    )


@pytest.fixture(scope="module")
def page():
    return config_docs.generate()


@pytest.mark.parametrize(("section", "name"), list(all_keys()), ids=lambda value: str(value))
def test_every_key_documented(page, section, name):
    heading = f"## `[[{section[:-2]}]]`" if section.endswith("[]") else f"## `[{section}]`"
    table = page.split(heading, 1)[1].split("\n## ", 1)[0]
    assert f"| `{name}` |" in table


@pytest.mark.parametrize("key", sorted(config_docs.VALIDATOR_RULES))
def test_validator_rule_names_existing_key(key):
    *section, name = key.replace("[]", "").split(".")
    model = model_at(tuple(section))
    assert model is not None
    assert name in model.model_fields


@pytest.mark.parametrize(
    ("key", "unit"),
    [
        ("step_mm", "mm"),
        ("exposure_s", "s"),
        ("stage_velocity_mm_s", "mm/s"),
        ("stage_acceleration_mm_s2", "mm/s²"),
        ("temperature_c", "°C"),
        ("power_mw", "mW"),
        ("dark_current_e_s", "electrons/s"),
        ("n_lines", ""),
    ],
)
def test_unit_from_key_suffix(key, unit):
    assert config_docs.unit_of(key) == unit


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("device_address", "1 ≤ value ≤ 99"),
        ("timeout_s", "0 < value ≤ 60"),
        ("homing", " or ".join(f'"{policy.value}"' for policy in HomingPolicy)),
        ("driver", '"simulated" or "zaber"'),
        ("checksums", ""),
    ],
)
def test_allowed_values_of_stage_key(field, expected):
    assert config_docs.allowed_text(f"stage.{field}", "stage", StageConfig.model_fields[field]) == expected


def test_check_flags_outdated_page(tmp_path):
    page = tmp_path / "configuration.md"
    page.write_text("# stale\n", encoding="utf-8")
    assert config_docs.main(["--check", str(page)]) == 1
    assert config_docs.main([str(page)]) == 0
    assert config_docs.main(["--check", str(page)]) == 0


def test_module_runs_as_script():
    result = subprocess.run(
        [sys.executable, "-m", "fluoscan.acquisition.config_docs", "--check", str(COMMITTED)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
