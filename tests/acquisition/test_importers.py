"""Importing recorded cubes from .npy and .mat files into scan stores."""

import numpy as np
import pytest
from scipy.io import savemat

from fluoscan.acquisition.importers import CubeLayout, ImportFileError, import_cube
from fluoscan.acquisition.store import ScanStatus, ScanStore


@pytest.fixture
def cube():
    rng = np.random.default_rng(3)
    return rng.integers(0, 4000, size=(4, 3, 5)).astype(np.uint16)


def test_npy_cube_round_trip(tmp_path, cube):
    np.save(tmp_path / "c.npy", cube)
    import_cube(tmp_path / "c.npy", tmp_path / "s.zarr", wavelengths_nm=(700, 900))
    store = ScanStore.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.raw[:], cube)
    assert store.raw.dtype == np.uint16
    assert store.status is ScanStatus.COMPLETE
    assert store.line_done().all()
    np.testing.assert_allclose(store.wavelengths_nm(), np.linspace(700, 900, 5))


@pytest.mark.parametrize("axes", [("wavelength", "y", "x"), ("x", "wavelength", "y")])
def test_permuted_axes(tmp_path, cube, axes):
    stored = np.transpose(cube, [("y", "x", "wavelength").index(a) for a in axes])
    np.save(tmp_path / "c.npy", stored)
    import_cube(tmp_path / "c.npy", tmp_path / "s.zarr", layout=CubeLayout(axes=axes), wavelengths_nm=(700, 900))
    np.testing.assert_array_equal(ScanStore.open(tmp_path / "s.zarr").raw[:], cube)


@pytest.mark.parametrize("order", ["C", "F"])
def test_mat_pixel_matrix(tmp_path, cube, order):
    matrix = cube.astype(float).reshape(-1, 5, order=order) if order == "C" else cube.astype(float).transpose(1, 0, 2).reshape(-1, 5)
    savemat(tmp_path / "c.mat", {"Y": matrix.T, "wl": np.linspace(650, 950, 5)})
    layout = CubeLayout(axes=("wavelength", "pixel"), image_shape=(4, 3), order=order)
    import_cube(tmp_path / "c.mat", tmp_path / "s.zarr", variable="Y", layout=layout, wavelength_variable="wl")
    store = ScanStore.open(tmp_path / "s.zarr")
    np.testing.assert_allclose(store.raw[:], cube)
    assert store.raw.dtype == np.float32
    np.testing.assert_allclose(store.wavelengths_nm(), np.linspace(650, 950, 5))


@pytest.mark.parametrize(
    ("setup", "kwargs", "expected"),
    [
        (lambda d: None, {}, r"import file not found"),
        (lambda d: (d / "c.txt").write_text("1 2"), {"name": "c.txt"}, r"unsupported import file type '\.txt'"),
        (lambda d: (d / "c.mat").write_bytes(b"not a mat file"), {"name": "c.mat"}, r"cannot read .* as a MATLAB file"),
        (lambda d: np.save(d / "c.npy", np.array([{"a": 1}], dtype=object)), {}, r"not a plain numeric \.npy array .* never loads pickled data"),
        (lambda d: (d / "c.npy").write_text("garbage"), {}, r"not a plain numeric \.npy array"),
        (lambda d: np.save(d / "c.npy", np.ones((2, 3))), {}, r"the array has 2 dimensions"),
        (lambda d: np.save(d / "c.npy", np.full((2, 2, 3), np.nan)), {}, r"contains 12 NaN or infinite values"),
        (lambda d: savemat(d / "c.mat", {"Y": np.ones((2, 2, 3))}), {"name": "c.mat", "variable": "Z"}, r"has no variable 'Z'; it has: Y"),
        (lambda d: np.save(d / "c.npy", np.ones((2, 2, 3))), {"wavelengths_nm": None}, r"wavelengths of .* are unknown"),
        (lambda d: np.save(d / "c.npy", np.ones((2, 2, 3))), {"wavelengths_nm": [1, 2, 3, 4]}, r"4 wavelengths given for a cube of 3 bands"),
    ],
)
def test_bad_import_files(tmp_path, setup, kwargs, expected):
    setup(tmp_path)
    kwargs = {"wavelengths_nm": (700, 900), **kwargs}
    name = kwargs.pop("name", "c.npy")
    with pytest.raises(ImportFileError, match=expected):
        import_cube(tmp_path / name, tmp_path / "s.zarr", **kwargs)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ({"axes": ("y", "x")}, r"must name y, x and wavelength, or pixel and wavelength"),
        ({"axes": ("pixel", "wavelength")}, r"needs the image shape"),
        ({"axes": ("pixel", "wavelength"), "image_shape": (2, 2), "order": "Z"}, r"order must be C or F"),
    ],
)
def test_bad_layouts(layout, expected):
    with pytest.raises(ImportFileError, match=expected):
        CubeLayout(**layout)


def test_samson_import(tmp_path, shared_data):
    path = shared_data / "hyperspectral" / "Samson.mat"
    layout = CubeLayout(axes=("wavelength", "pixel"), image_shape=(95, 95), order="F")
    import_cube(path, tmp_path / "samson.zarr", variable="Y", layout=layout, wavelengths_nm=(401, 889), truth_spectra_variable="GT")
    store = ScanStore.open(tmp_path / "samson.zarr")
    assert store.shape == (95, 95, 156)
    assert store.group["truth"]["spectra"].shape == (3, 156)
