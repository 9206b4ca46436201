"""The abundance_start setting: the configuration's value, the caller's override, and imported cubes."""

import numpy as np
import pytest
import zarr

from fluoscan.acquisition.config import AbundanceStart, ConfigError, UnmixingConfig, parse_config
from fluoscan.acquisition.replay import raster_config
from fluoscan.tests.unmixing.test_store import MOUSE_UNMIXING, write_scan
from fluoscan.unmixing import sweep_sparsity, unmix_store

pytestmark = pytest.mark.filterwarnings("ignore::fluoscan.unmixing.ConvergenceWarning")


def test_default_is_the_published_constant():
    assert UnmixingConfig().abundance_start is AbundanceStart.CONSTANT


def test_config_rejects_unknown_start():
    with pytest.raises(ConfigError, match=r"unmixing.abundance_start = 'zeros': Input should be 'constant' or 'lstsq'"):
        parse_config({"unmixing": {"abundance_start": "zeros"}})


@pytest.mark.parametrize(
    ("configured", "argument", "expected"),
    [
        (None, None, "constant"),
        ("lstsq", None, "lstsq"),
        ("lstsq", "constant", "constant"),
        (None, "lstsq", "lstsq"),
    ],
)
def test_unmix_store_start(tmp_path, configured, argument, expected):
    path = tmp_path / "mouse.zarr"
    unmixing = MOUSE_UNMIXING if configured is None else {**MOUSE_UNMIXING, "abundance_start": configured}
    write_scan(path, unmixing=unmixing)
    unmix_store(path, abundance_start=argument, max_iter=5)
    assert zarr.open_group(path, mode="r")["unmixing"].attrs["abundance_start"] == expected


def test_unmix_store_rejects_unknown_start(tmp_path):
    path = tmp_path / "mouse.zarr"
    write_scan(path)
    with pytest.raises(ConfigError, match=r"abundance_start = 'zeros'"):
        unmix_store(path, abundance_start="zeros")


def test_sweep_takes_start_from_config(tmp_path):
    path = tmp_path / "mouse.zarr"
    write_scan(path, unmixing={**MOUSE_UNMIXING, "abundance_start": "lstsq"})
    sweep_sparsity(path, [0.8], max_iter=5, keep_abundance=False)
    assert zarr.open_group(path, mode="r")["unmixing/sweep"].attrs["abundance_start"] == "lstsq"


def test_lstsq_start_keeps_good_spectra(tmp_path):
    """From the true spectra, least-squares weights leave them in place; constant weights pull them apart."""
    path = tmp_path / "mouse.zarr"
    write_scan(path, unmixing={**MOUSE_UNMIXING, "components": [dict(c, sparsity=None) for c in MOUSE_UNMIXING["components"]]})
    drift = {}
    for start in ("constant", "lstsq"):
        unmix_store(path, abundance_start=start, max_iter=1, tol=0.0)
        group = zarr.open_group(path, mode="r")["unmixing"]
        drift[start] = float(np.max(np.abs(group["spectra"][:] - group["spectra_init"][:])))
    assert drift["lstsq"] < drift["constant"] / 3


@pytest.mark.parametrize("components", [None, ["soil", "tree", "water"]])
def test_imported_cubes_start_from_least_squares(components):
    config = raster_config(
        n_lines=3, y_mm=np.arange(3.0), n_points=4, point_pitch_mm=None, dark_frames=0, component_names=components
    )
    assert parse_config(config).unmixing.abundance_start is AbundanceStart.LSTSQ
