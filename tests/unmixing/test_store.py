"""unmix_store on small scan stores written with ScanStore, as a scan would write them."""

import subprocess
import sys

import numpy as np
import pytest
import zarr

from fluoscan.acquisition.config import ComponentConfig, ConfigError
from fluoscan.acquisition.store import ScanStatus, ScanStore, StoreError
from fluoscan.tests.conftest import PROJECT_ROOT
from fluoscan.tests.unmixing.synthetic import MOUSE_COMPONENTS, mouse_scene
from fluoscan.unmixing import map_correlation, match_components, sweep_sparsity, unmix_store

# Several tests cap max_iter to stay fast, so their fits stop before converging on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::fluoscan.unmixing.nmf.ConvergenceWarning")

DARK_COUNTS = 300
CHECK_STORE = PROJECT_ROOT.parent / "shared" / "checks" / "check_store.py"
MOUSE_UNMIXING = {
    "components": [
        {"name": "autofluorescence", "spectrum": "library:autofluorescence"},
        {"name": "icg_lnp", "spectrum": "library:icg_lnp", "sparsity": 0.7},
        {"name": "af750", "spectrum": "library:af750", "sparsity": 0.7},
    ],
    "max_iter": 300,
}


def write_scan(path, *, complete=True, lines=None, unmixing=MOUSE_UNMIXING, saturate=(), seed=0):
    """Write a simulated mouse scan (Poisson counts over a dark level) and return the truth (A, S)."""
    A, S, wavelengths_nm = mouse_scene(seed=seed)
    ny, nx, _ = A.shape
    rng = np.random.default_rng(seed)
    counts = rng.poisson(A @ S + DARK_COUNTS).astype(np.uint16)
    for y, x in saturate:
        counts[y, x, 10:14] = 65535
    config = {"unmixing": unmixing} if unmixing is not None else {}
    store = ScanStore.create(
        path, n_lines=ny, wavelengths_nm=wavelengths_nm, x=np.arange(nx) * 0.5, x_units="mm", attrs={"config": config}
    )
    store.write_dark(np.full((3, nx, wavelengths_nm.size), DARK_COUNTS, dtype=np.uint16))
    for y in range(ny) if lines is None else lines:
        store.write_line(y, counts[y], y_mm=0.5 * y, time_s=1.0e9 + y, laser_power_mw=40.0)
    store.write_truth(A, S, list(MOUSE_COMPONENTS))
    if complete:
        store.set_status(ScanStatus.COMPLETE, "finished")
    return A, S


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "mouse.zarr"
    A, S = write_scan(path)
    return path, A, S


def test_writes_the_store_contract(scan):
    path, A, S = scan
    assert unmix_store(path) == path
    group = zarr.open_group(path, mode="r")["unmixing"]
    ny, nx, _ = A.shape
    expected = {
        "abundance": ((ny, nx, 3), np.float32, ("y", "x", "component")),
        "spectra": ((3, S.shape[1]), np.float32, ("component", "wavelength")),
        "spectra_init": ((3, S.shape[1]), np.float32, ("component", "wavelength")),
        "residual": ((ny, nx), np.float32, ("y", "x")),
    }
    for name, (shape, dtype, dims) in expected.items():
        assert group[name].shape == shape, name
        assert group[name].dtype == dtype, name
        assert tuple(group[name].metadata.dimension_names) == dims, name
    assert tuple(group["loss"].metadata.dimension_names) == ("iteration",)
    assert group.attrs["components"] == list(MOUSE_COMPONENTS)
    assert group.attrs["sparsity_target"] == [None, 0.7, 0.7]
    assert group.attrs["sparsity_achieved"][0] is None
    assert group.attrs["sparsity_achieved"][1] == pytest.approx(0.7, abs=0.03)
    n_iter, every = group.attrs["n_iter"], group["loss"].attrs["every_iterations"]
    assert group["loss"].shape[0] == n_iter // every + 1 + (n_iter % every > 0)
    assert group.attrs["loss"] == "frobenius"
    assert group.attrs["max_iter"] == 300


def test_separates_markers_from_autofluorescence(scan):
    path, A, S = scan
    unmix_store(path)
    group = zarr.open_group(path, mode="r")["unmixing"]
    matching = match_components(S, group["spectra"][:])
    assert matching.estimate.tolist() == [0, 1, 2]
    assert matching.angle.max() < 0.1
    correlation = map_correlation(A, group["abundance"][:])
    assert correlation[1] > 0.9
    assert correlation[2] > 0.9


@pytest.mark.skipif(not CHECK_STORE.exists(), reason=f"{CHECK_STORE} is absent (it is not part of the repository)")
def test_passes_the_store_check(scan):
    path, _, _ = scan
    unmix_store(path)
    result = subprocess.run(
        [sys.executable, str(CHECK_STORE), str(path), "--truth"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readable_by_xarray(scan):
    xarray = pytest.importorskip("xarray")
    path, _, _ = scan
    unmix_store(path)
    dataset = xarray.open_zarr(path, group="unmixing", consolidated=False)
    assert dataset["abundance"].dims == ("y", "x", "component")
    assert list(dataset["component"].values) == list(MOUSE_COMPONENTS)


def test_rejects_incomplete_store(tmp_path):
    path = tmp_path / "partial.zarr"
    write_scan(path, complete=False, lines=range(10))
    with pytest.raises(StoreError, match=r"status 'acquiring', not 'complete'.*force=True"):
        unmix_store(path)


def test_forced_on_incomplete_store_fits_acquired_lines(tmp_path):
    path = tmp_path / "partial.zarr"
    write_scan(path, complete=False, lines=range(12))
    unmix_store(path, force=True)
    abundance = zarr.open_group(path, mode="r")["unmixing"]["abundance"][:]
    assert np.all(np.isfinite(abundance[:12]))
    assert np.all(np.isnan(abundance[12:]))


def test_keeps_existing_result_without_overwrite(scan):
    path, _, _ = scan
    unmix_store(path, max_iter=5)
    with pytest.raises(StoreError, match=r"already has an unmixing/ group; pass overwrite=True"):
        unmix_store(path, overwrite=False)
    unmix_store(path, max_iter=7, tol=0.0)
    assert zarr.open_group(path, mode="r")["unmixing"].attrs["n_iter"] == 7


def test_components_and_sparsity_override_config(scan):
    path, _, _ = scan
    unmix_store(path, components=["af750", "autofluorescence"], sparsity=[0.5, None], loss="kullback-leibler", max_iter=30)
    attrs = zarr.open_group(path, mode="r")["unmixing"].attrs
    assert attrs["components"] == ["af750", "autofluorescence"]
    assert attrs["sparsity_target"] == [0.5, None]
    assert attrs["spectrum_init"] == ["library:af750", "library:autofluorescence"]
    assert attrs["loss"] == "kullback-leibler"


def test_component_configs_are_used_as_given(scan):
    path, _, S = scan
    components = [
        ComponentConfig(name="autofluorescence", spectrum="library:autofluorescence"),
        ComponentConfig(name="icg_lnp", spectrum="library:icg_lnp", fixed=True, sparsity=0.7),
        ComponentConfig(name="af750", spectrum="library:af750", fixed=True, sparsity="auto"),
    ]
    unmix_store(path, components=components, max_iter=50)
    group = zarr.open_group(path, mode="r")["unmixing"]
    np.testing.assert_allclose(group["spectra"][1:], S[1:].astype(np.float32), rtol=1e-6)
    assert group.attrs["fixed"] == [False, True, True]
    assert group.attrs["sparsity_target"] == [None, 0.7, "auto"]


def test_store_without_config_uses_defaults(tmp_path):
    path = tmp_path / "bare.zarr"
    write_scan(path, unmixing=None)
    unmix_store(path, max_iter=20)
    assert zarr.open_group(path, mode="r")["unmixing"].attrs["components"] == list(MOUSE_COMPONENTS)


def test_invalid_config_is_reported(tmp_path):
    path = tmp_path / "bad.zarr"
    write_scan(path, unmixing={"components": [{"name": "a", "sparsity": 2.0}]})
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\], got 2.0"):
        unmix_store(path)


def test_sparsity_override_count_must_match(scan):
    path, _, _ = scan
    with pytest.raises(ValueError, match=r"got 2 sparsity targets for 3 components"):
        unmix_store(path, sparsity=[0.5, 0.5])


def test_saturated_pixels_are_masked(tmp_path):
    path = tmp_path / "bright.zarr"
    write_scan(path, saturate=[(3, 4), (10, 11)])
    with pytest.warns(UserWarning, match=r"2 saturated pixels"):
        unmix_store(path, max_iter=50)
    group = zarr.open_group(path, mode="r")["unmixing"]
    assert group.attrs["n_saturated_pixels"] == 2
    assert np.all(np.isfinite(group["abundance"][:]))


def test_reference_spectrum_from_reference_group(tmp_path):
    path = tmp_path / "ref.zarr"
    write_scan(path)
    A, S, _ = mouse_scene()
    reference = zarr.open_group(path, mode="r+").require_group("reference")
    raw = reference.create_array("raw", shape=(4, 5, S.shape[1]), dtype=np.float32)
    raw[...] = np.broadcast_to(100.0 * S[0] + DARK_COUNTS, raw.shape)
    dark = reference.create_array("dark", shape=(S.shape[1],), dtype=np.float32)
    dark[...] = DARK_COUNTS
    components = [ComponentConfig(name="autofluorescence", spectrum="reference"), ComponentConfig(name="icg_lnp", spectrum="library:icg_lnp")]
    unmix_store(path, components=components, max_iter=1, tol=0.0)
    spectra_init = zarr.open_group(path, mode="r")["unmixing"]["spectra_init"][:]
    np.testing.assert_allclose(spectra_init[0], S[0], rtol=1e-5, atol=1e-6)


def test_reference_spectrum_missing_is_an_error(scan):
    path, _, _ = scan
    with pytest.raises(ValueError, match=r"no reference acquisition"):
        unmix_store(path, components=[ComponentConfig(name="autofluorescence", spectrum="reference")])


def test_missing_store_is_an_error(tmp_path):
    with pytest.raises(StoreError, match=r"store not found"):
        unmix_store(tmp_path / "nothing.zarr")


def test_sparsity_sweep_records_trends(scan):
    path, _, _ = scan
    unmix_store(path, max_iter=20)
    targets = [0.8, 0.9, 0.97]
    sweep_sparsity(path, targets, max_iter=60)
    group = zarr.open_group(path, mode="r")["unmixing"]
    sweep = group["sweep"]
    assert sweep["targets"][:].tolist() == targets
    assert sweep.attrs["swept"] == ["icg_lnp", "af750"]
    n_zeroed = sweep["n_zeroed"][:]
    assert n_zeroed.shape == (3, 3)
    assert np.all(n_zeroed[:, 0] == 0)
    assert np.all(np.diff(n_zeroed[:, 1:], axis=0) >= 0), "a higher target must not zero fewer pixels"
    assert np.all(n_zeroed[-1, 1:] > n_zeroed[0, 1:])
    assert sweep["spectra_distance"].shape == (3, 3)
    assert sweep["spectra_distance"].attrs["units"] == "rad"
    assert sweep["abundance"].shape == (3, *group["abundance"].shape)
    assert "abundance" in group, "the sweep must leave the main result in place"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": [0.5, 1.2]}, r"targets must be numbers in \[0, 1\], got \[0.5, 1.2\]"),
        ({"targets": []}, r"targets must be numbers in \[0, 1\], got \[\]"),
        ({"targets": [0.5], "swept": ["gfp"]}, r"components to sweep must be some of \['autofluorescence', 'icg_lnp', 'af750'\], got \['gfp'\]"),
    ],
)
def test_sparsity_sweep_rejects_bad_arguments(scan, kwargs, match):
    path, _, _ = scan
    with pytest.raises(ValueError, match=match):
        sweep_sparsity(path, **kwargs)
