"""Initial spectra: pixels picked by SPA, the mean, the library, files and the reference."""

import numpy as np
import pytest

from fluoscan.tests.unmixing.synthetic import separable_product
from fluoscan.unmixing.init import endmember_spectra, initial_spectra, successive_projection_picks
from fluoscan.unmixing.library import library_spectrum
from fluoscan.unmixing.metrics import match_components

WAVELENGTHS_NM = np.linspace(700.0, 900.0, 40)


@pytest.mark.parametrize("n_components", [2, 3, 4])
def test_spa_picks_the_pure_pixels(n_components):
    M, _, _ = separable_product(300, 40, n_components, seed=n_components)
    # Brightness differs from pixel to pixel; SPA works on unit-sum pixels, so it must not matter.
    M *= np.random.default_rng(0).uniform(0.5, 3.0, (300, 1))
    picks = successive_projection_picks(M, n_components)
    assert sorted(picks.tolist()) == list(range(n_components))


def test_endmember_spectra_are_close_to_truth():
    M, _, S = separable_product(500, 40, 3, seed=5)
    spectra = endmember_spectra(M, 3)
    assert spectra.max(axis=1) == pytest.approx(np.ones(3))
    assert match_components(S, spectra).angle.max() < 0.15


def test_spa_needs_enough_non_zero_pixels():
    M = np.zeros((5, 10))
    M[0, 0] = 1.0
    with pytest.raises(ValueError, match=r"only 1 pixels have a non-zero spectrum, fewer than the 2 components"):
        successive_projection_picks(M, 2)


def test_initial_spectra_from_every_source(tmp_path):
    M, _, _ = separable_product(200, WAVELENGTHS_NM.size, 3, seed=6)
    table = np.column_stack([WAVELENGTHS_NM, np.linspace(0.0, 2.0, WAVELENGTHS_NM.size)])
    np.savetxt(tmp_path / "ramp.csv", table, delimiter=",")
    reference = np.linspace(2.0, 1.0, WAVELENGTHS_NM.size)
    spectra = initial_spectra(
        ["library:af750", "mean", "ramp.csv", "reference", "auto"],
        M,
        WAVELENGTHS_NM,
        reference_mean=reference,
        base_dir=tmp_path,
    )
    assert spectra.shape == (5, WAVELENGTHS_NM.size)
    np.testing.assert_allclose(spectra[0], library_spectrum("af750", WAVELENGTHS_NM))
    np.testing.assert_allclose(spectra[1], M.mean(axis=0) / M.mean(axis=0).max())
    np.testing.assert_allclose(spectra[2], np.linspace(0.0, 1.0, WAVELENGTHS_NM.size))
    np.testing.assert_allclose(spectra[3], reference / 2.0)
    assert spectra[4].max() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("library:gfp", r"unknown library spectrum 'gfp'"),
        ("no-such-file.npy", r"not a library name, a keyword or an existing file"),
        ("reference", r'"reference" needs a reference acquisition'),
    ],
)
def test_bad_source_is_rejected(source, match):
    M = np.ones((10, WAVELENGTHS_NM.size))
    with pytest.raises(ValueError, match=match):
        initial_spectra([source], M, WAVELENGTHS_NM)


def test_wavelength_axis_must_match_data():
    with pytest.raises(ValueError, match=r"wavelength axis has shape \(40,\), the data have 7 wavelengths"):
        initial_spectra(["mean"], np.ones((10, 7)), WAVELENGTHS_NM)
