"""The Samson cube through the whole path: import into a store, replay through a scan, unmix.

Samson is a real hyperspectral cube of 95 x 95 pixels and 156 bands, with reference spectra of
soil, tree and water. It is not part of the repository, so the tests skip without it. The
import names three components, so the store's configuration starts them from spectra picked from
the data with least-squares starting weights (acquisition.replay.raster_config).
"""

import warnings

import numpy as np
import pytest
import zarr

from fluoscan.acquisition import run_scan
from fluoscan.acquisition.importers import CubeLayout, import_cube
from fluoscan.acquisition.replay import replay_config
from fluoscan.tests.conftest import SHARED_DATA
from fluoscan.unmixing import ConvergenceWarning, match_components, unmix_store

SAMSON = SHARED_DATA / "hyperspectral" / "Samson.mat"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    if not SAMSON.is_file():
        pytest.skip(f"real data file {SAMSON} is absent (it is not part of the repository)")
    path = tmp_path_factory.mktemp("samson") / "samson.zarr"
    layout = CubeLayout(axes=("wavelength", "pixel"), image_shape=(95, 95), order="F")
    import_cube(
        SAMSON,
        path,
        variable="Y",
        layout=layout,
        wavelengths_nm=(401, 889),
        truth_spectra_variable="GT",
        components=["soil", "tree", "water"],
    )
    return path


def mean_angle_after_unmixing(path, reference_store=None):
    """Unmix ``path`` and return the mean spectral angle to the reference spectra of ``reference_store`` (default: itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        unmix_store(path)
    reference = zarr.open_group(str(reference_store or path), mode="r")["truth"]["spectra"][:]
    fitted = zarr.open_group(str(path), mode="r")["unmixing"]["spectra"][:]
    return match_components(reference, fitted).mean_angle


def test_imported_cube_unmixes(imported, tmp_path):
    assert mean_angle_after_unmixing(imported) <= 0.10


def test_replayed_cube_unmixes(imported, tmp_path):
    replayed = run_scan(replay_config(imported), tmp_path / "replayed.zarr")
    recorded_raw = zarr.open_group(str(imported), mode="r")["raw"]
    replayed_raw = zarr.open_group(str(replayed), mode="r")["raw"]
    assert replayed_raw.dtype == recorded_raw.dtype
    np.testing.assert_array_equal(replayed_raw[:], recorded_raw[:])
    assert mean_angle_after_unmixing(replayed, reference_store=imported) <= 0.15
