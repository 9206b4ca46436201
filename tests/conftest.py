"""Fixtures shared by every test package."""

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The folder of real measured data next to the project; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is not part of the repository)")
    return SHARED_DATA


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hardware-config",
        default=None,
        help="TOML configuration of real instruments; runs the tests marked 'hardware' against them",
    )
    parser.addoption(
        "--hardware-emit",
        action="store_true",
        help="also run hardware tests that switch the laser on (wear laser goggles, close the enclosure)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--hardware-config"):
        return
    skip = pytest.mark.skip(reason="needs real instruments: pass --hardware-config CONFIG.toml")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def hardware_config(request: pytest.FixtureRequest):
    """The validated configuration of the real instruments given with --hardware-config."""
    from fluoscan.acquisition.config import load_config

    return load_config(request.config.getoption("--hardware-config"))
