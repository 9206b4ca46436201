"""Stores open in xarray and Dask, with named dimensions and coordinates, consolidated or not."""

import json
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from fluoscan.acquisition.store import ScanStatus, ScanStore

N_LINES, N_POINTS, N_WAVELENGTHS = 6, 4, 5
NAMES = ["autofluorescence", "icg_lnp", "af750"]
Y_MM = 2.0 + 0.5 * np.arange(N_LINES)
X_MM = 0.25 * np.arange(N_POINTS)
WAVELENGTHS_NM = np.linspace(700.0, 900.0, N_WAVELENGTHS)


def cube():
    return np.arange(N_LINES * N_POINTS * N_WAVELENGTHS, dtype=np.uint16).reshape(N_LINES, N_POINTS, N_WAVELENGTHS)


def scanned_store(path, status=ScanStatus.COMPLETE):
    """Write a store the way a simulated scan does: truth first, then the lines, then the status."""
    store = ScanStore.create(path, n_lines=N_LINES, wavelengths_nm=WAVELENGTHS_NM, x=X_MM, x_units="mm")
    store.write_truth(np.ones((N_LINES, N_POINTS, 3)), np.ones((3, N_WAVELENGTHS)), NAMES)
    store.write_dark(np.ones((2, N_POINTS, N_WAVELENGTHS), np.uint16))
    for index in range(N_LINES):
        store.write_line(index, cube()[index], y_mm=Y_MM[index], time_s=1.7e9 + index, laser_power_mw=40.0)
    store.set_status(status, "test")
    return store


def unmix_into(path):
    """Add an unmixing/ group in the store layout, through ScanStore opened for writing."""
    with ScanStore.open(path, mode="r+") as store:
        group = store.group.require_group("unmixing")
        abundance = np.arange(N_LINES * N_POINTS * 3, dtype=np.float32).reshape(N_LINES, N_POINTS, 3)
        group.create_array("abundance", shape=abundance.shape, dtype=np.float32, dimension_names=["y", "x", "component"])[...] = abundance
        group.create_array("spectra", shape=(3, N_WAVELENGTHS), dtype=np.float32, dimension_names=["component", "wavelength"])[...] = 1.0
        group.create_array("loss", shape=(7,), dtype=np.float64, dimension_names=["iteration"])[...] = np.geomspace(10, 1, 7)
        group.attrs.update({"n_iter": 7, "converged": True})
        store.write_group_coordinates("unmixing", NAMES)
    return abundance


def has_consolidated_metadata(path):
    return "consolidated_metadata" in json.loads((path / "zarr.json").read_text())


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "scan.zarr"
    scanned_store(path)
    return path


# ---------------------------------------------------------------------------------- root group


@pytest.mark.parametrize("consolidated", [False, None], ids=["listed", "consolidated"])
def test_root_opens_in_xarray(store_path, consolidated):
    dataset = xr.open_zarr(store_path, consolidated=consolidated)
    assert dataset["raw"].dims == ("y", "x", "wavelength")
    assert dataset["dark"].dims == ("x", "wavelength")
    np.testing.assert_array_equal(dataset["raw"].values, cube())
    np.testing.assert_allclose(dataset["y"].values, Y_MM)
    np.testing.assert_allclose(dataset["x"].values, X_MM)
    np.testing.assert_allclose(dataset["wavelength"].values, WAVELENGTHS_NM)


@pytest.mark.parametrize(("name", "units"), [("y", "mm"), ("x", "mm"), ("wavelength", "nm"), ("raw", "counts")])
def test_root_variables_carry_units(store_path, name, units):
    dataset = xr.open_zarr(store_path, consolidated=False)
    assert dataset[name].attrs["units"] == units


def test_root_coordinates_index_raw(store_path):
    raw = xr.open_zarr(store_path, consolidated=False)["raw"]
    assert set(raw.coords) == {"y", "x", "wavelength"}
    line = raw.sel(y=Y_MM[3], wavelength=WAVELENGTHS_NM[-1])
    np.testing.assert_array_equal(line.values, cube()[3, :, -1])


def test_root_attributes_in_xarray(store_path):
    attrs = xr.open_zarr(store_path, consolidated=False).attrs
    assert attrs["status"] == "complete"
    assert attrs["end_reason"] == "test"


def test_raw_opens_in_dask(store_path):
    raw = da.from_zarr(str(store_path), component="raw")
    assert raw.chunks[0] == (1,) * N_LINES
    np.testing.assert_array_equal(raw.compute(), cube())
    np.testing.assert_array_equal(raw.mean(axis=2).compute(), cube().mean(axis=2))


# ---------------------------------------------------------------------------------- subgroups


@pytest.mark.parametrize("consolidated", [False, None], ids=["listed", "consolidated"])
def test_unmixing_opens_in_xarray(store_path, consolidated):
    abundance = unmix_into(store_path)
    dataset = xr.open_zarr(store_path, group="unmixing", consolidated=consolidated)
    assert dataset["abundance"].dims == ("y", "x", "component")
    assert list(dataset["component"].values) == NAMES
    np.testing.assert_allclose(dataset["y"].values, Y_MM)
    np.testing.assert_allclose(dataset["wavelength"].values, WAVELENGTHS_NM)
    np.testing.assert_array_equal(dataset["abundance"].sel(component="icg_lnp").values, abundance[..., 1])
    assert dataset.attrs["components"] == NAMES


def test_unmixing_opens_in_dask(store_path):
    abundance = unmix_into(store_path)
    array = da.from_zarr(str(store_path), component="unmixing/abundance")
    np.testing.assert_array_equal(array.compute(), abundance)


def test_truth_coordinates_read_back(store_path):
    # write_truth runs before the first line, when y is NaN; completing the scan copies y again.
    truth = xr.open_zarr(store_path, group="truth", consolidated=False)
    np.testing.assert_allclose(truth["y"].values, Y_MM)
    assert list(truth["component"].values) == NAMES
    assert truth["abundance"].dims == ("y", "x", "component")
    assert truth["spectra"].dims == ("component", "wavelength")


def test_datatree_opens_whole_store(store_path):
    unmix_into(store_path)
    tree = xr.open_datatree(store_path, engine="zarr", consolidated=False)
    assert set(tree.children) == {"truth", "unmixing"}
    assert tree["unmixing"]["abundance"].dims == ("y", "x", "component")


# ---------------------------------------------------------------------------------- consolidation


@pytest.mark.parametrize("status", [ScanStatus.COMPLETE, ScanStatus.ABORTED])
def test_final_status_consolidates(tmp_path, status):
    scanned_store(tmp_path / "s.zarr", status)
    assert has_consolidated_metadata(tmp_path / "s.zarr")


def test_acquiring_store_not_consolidated(tmp_path):
    ScanStore.create(tmp_path / "s.zarr", n_lines=2, wavelengths_nm=WAVELENGTHS_NM, x=X_MM, x_units="mm")
    assert not has_consolidated_metadata(tmp_path / "s.zarr")


def test_open_for_writing_drops_consolidation(store_path):
    ScanStore.open(store_path, mode="r+")
    assert not has_consolidated_metadata(store_path)


def test_open_for_reading_keeps_consolidation(store_path):
    ScanStore.open(store_path)
    assert has_consolidated_metadata(store_path)


def test_leaving_writable_store_consolidates(store_path):
    unmix_into(store_path)
    assert has_consolidated_metadata(store_path)
    group = zarr.open_group(store_path, mode="r")
    assert "unmixing" in group
    assert group["unmixing"].attrs["n_iter"] == 7


def test_consolidated_open_without_warning(store_path):
    unmix_into(store_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xr.open_zarr(store_path, group="unmixing")


def test_open_lists_unconsolidated_group(store_path):
    # A writer that bypasses ScanStore leaves the consolidated metadata stale.
    zarr.open_group(store_path, mode="r+").require_group("unmixing").attrs["n_iter"] = 3
    assert "unmixing" not in zarr.open_group(store_path, mode="r")
    assert "unmixing" in ScanStore.open(store_path).group
    assert xr.open_zarr(store_path, group="unmixing", consolidated=False).attrs["n_iter"] == 3


def test_consolidate_refreshes_stale_metadata(store_path):
    zarr.open_group(store_path, mode="r+").require_group("unmixing")
    ScanStore.open(store_path).consolidate()
    assert "unmixing" in zarr.open_group(store_path, mode="r")
