"""Configuration errors end in one line naming the key, the value and what is allowed; help reads well."""

import re

import pytest
from typer.testing import CliRunner

from fluoscan.cli.main import app

BAD_CONFIGS = [
    ("step below range", "[scan]\nstep_mm = -1", r"scan\.step_mm = -1: .*; allowed: 0 < step_mm <= 100$"),
    ("line count zero", "[scan]\nn_lines = 0", r"scan\.n_lines = 0: .*; allowed: 1 <= n_lines <= 1000000$"),
    ("line count not a number", '[scan]\nn_lines = "many"', r"scan\.n_lines = 'many': Input should be a valid integer.*; allowed: 1 <= n_lines"),
    ("exposure above range", "[scan]\nexposure_s = 601", r"scan\.exposure_s = 601: .*; allowed: 0 < exposure_s <= 600$"),
    ("laser power above range", "[laser]\npower_mw = 20000", r"laser\.power_mw = 20000: .*; allowed: 0 < power_mw <= 10000$"),
    ("sensor too cold", "[spectrometer]\ntemperature_c = -200", r"spectrometer\.temperature_c = -200: .*; allowed: -120 <= temperature_c <= 30$"),
    ("stage address above range", "[stage]\ndevice_address = 100", r"stage\.device_address = 100: .*; allowed: 1 <= device_address <= 99$"),
    ("phantom key nested", "[simulation.phantom]\ntube_depth_mm = 50", r"simulation\.phantom\.tube_depth_mm = 50: .*; allowed: 0 <= tube_depth_mm <= 20$"),
    ("homing not an option", '[stage]\nhoming = "sometimes"', r"stage\.homing = 'sometimes': Input should be 'home' or 'require'$"),
    ("misspelt key", "[spectrometer]\nn_pointz = 3", r"spectrometer\.n_pointz: unknown key; did you mean n_points\? docs/configuration\.md lists every key$"),
    ("unknown section", "[lazer]\npower_mw = 3", r"lazer: unknown key; did you mean laser\? docs/configuration\.md lists every key$"),
    ("limits reversed", "[stage]\nlimits_mm = [5.0, 1.0]", r"stage: limits_mm must be \[min, max\] with min < max, got \[5\.0, 1\.0\]$"),
    (
        "raster leaves limits",
        "[scan]\ny_start_mm = 100.0\nn_lines = 100\n[stage]\nlimits_mm = [0.0, 120.0]",
        r"scan positions 100\.\.149\.5 mm leave stage\.limits_mm \[0\.0, 120\.0\]: change scan\.y_start_mm, scan\.step_mm or scan\.n_lines$",
    ),
    ("sparsity above one", '[[unmixing.components]]\nname = "icg_lnp"\nsparsity = 1.5', r"unmixing\.components\.0: sparsity must be in \[0, 1\], got 1\.5$"),
    ("component without name", "[[unmixing.components]]\nsparsity = 0.9", r"unmixing\.components\.0\.name: missing required key$"),
    ("not TOML", "[scan\nn_lines = 3", r"is not valid TOML: .*line 1"),
]


def run(arguments):
    return CliRunner().invoke(app, arguments)


def help_text(result):
    """Return the help output as one line of words, without rich's box drawing and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def last_line(result):
    return result.output.strip().splitlines()[-1]


@pytest.fixture(params=[["scan"], ["devices", "check"]], ids=["scan", "devices check"])
def command(request):
    return request.param


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in BAD_CONFIGS], ids=[case[0] for case in BAD_CONFIGS])
def test_bad_config_ends_in_one_line(tmp_path, command, text, expected):
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n", encoding="utf-8")
    result = run([*command, str(config)])
    assert result.exit_code == 1
    assert re.search(expected, last_line(result)), last_line(result)
    assert "Traceback" not in result.output


def test_bad_config_names_file(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[scan]\nstep_mm = -1\n", encoding="utf-8")
    result = run(["scan", str(config)])
    assert f"error: invalid configuration in {config}:" in result.output


def test_missing_config_file(tmp_path, command):
    result = run([*command, str(tmp_path / "absent.toml")])
    assert result.exit_code == 1
    assert last_line(result) == f"error: configuration file not found: {tmp_path / 'absent.toml'}"


def test_verbose_shows_traceback(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[scan]\nstep_mm = -1\n", encoding="utf-8")
    result = run(["-v", "scan", str(config)])
    assert result.exit_code == 1
    assert "Traceback" in result.output


def test_every_error_line_names_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[scan]\nstep_mm = -1\nexposure_s = 0\n[laser]\npower_mw = 0\n", encoding="utf-8")
    lines = run(["scan", str(config)]).output.strip().splitlines()
    assert len(lines) == 4
    assert lines[1].startswith("  scan.step_mm = -1:")
    assert lines[2].startswith("  scan.exposure_s = 0:")
    assert lines[3].startswith("  laser.power_mw = 0:")


HELP_CASES = [
    (["--help"], "Spectrally resolved NIR fluorescence scanning"),
    (["scan", "--help"], "Acquire a scan"),
    (["replay", "--help"], "Re-run a recorded scan"),
    (["unmix", "--help"], "Unmix an existing store"),
    (["import", "--help"], "Turn a recorded cube into a scan store"),
    (["report", "--help"], "Write figures"),
    (["devices", "--help"], "Serve simulated devices, or check real ones"),
    (["devices", "check", "--help"], "Connect to every device of a configuration"),
]


@pytest.mark.parametrize(("arguments", "summary"), HELP_CASES, ids=[" ".join(case[0]) for case in HELP_CASES])
def test_help_describes_command(arguments, summary):
    result = run(arguments)
    assert result.exit_code == 0
    assert "Usage:" in result.output
    assert summary in help_text(result)


@pytest.mark.parametrize(
    ("arguments", "option", "text"),
    [
        (["scan", "--help"], "--preview", "every N lines"),
        (["scan", "--help"], "--resume", "first missing line"),
        (["report", "--help"], "--output", "STORE-report next to the store"),
        (["unmix", "--help"], "--sparsity", "sparsity targets in [0, 1]"),
    ],
)
def test_help_explains_option(arguments, option, text):
    output = help_text(run(arguments))
    assert option in output
    assert text in output
