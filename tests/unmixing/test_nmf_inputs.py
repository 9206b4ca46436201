"""SparseNMF input checks: bad parameters, bad data, clipping and saturated pixels."""

import numpy as np
import pytest

from fluoscan.tests.unmixing.synthetic import separable_product
from fluoscan.unmixing import DataWarning, SparseNMF


@pytest.fixture
def data():
    M, _, S = separable_product(60, 12, 3, seed=20)
    return M, S


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_components": 0}, r"n_components must be a positive integer or None, got 0"),
        ({"n_components": 2.5}, r"n_components must be a positive integer or None, got 2.5"),
        ({"n_components": None}, r"number of components is unknown"),
        ({"n_components": 3, "components": ["a", "b"]}, r"n_components gives 3, components gives 2"),
        ({"n_components": 3, "sparsity": [0.5, None]}, r"sparsity gives 2"),
        ({"n_components": 2, "components": ["a", "a"]}, r"names must be unique, got \['a', 'a'\]"),
        ({"n_components": 2, "sparsity": 1.5}, r"sparsity of 'component_0' must be a number in \[0, 1\].*got 1.5"),
        ({"n_components": 2, "sparsity": "high"}, r"got 'high'"),
        ({"n_components": 2, "sparsity": [None, -0.1]}, r"sparsity of 'component_1'.*got -0.1"),
        ({"n_components": 2, "loss": "l1"}, r"loss must be one of 'frobenius', 'kullback-leibler', got 'l1'"),
        ({"n_components": 2, "max_iter": 0}, r"max_iter must be an integer >= 1, got 0"),
        ({"n_components": 2, "max_iter": 10.0}, r"max_iter must be an integer >= 1, got 10.0"),
        ({"n_components": 2, "tol": -1e-3}, r"tol must be a number >= 0, got -0.001"),
        ({"n_components": 2, "loss_every": 0}, r"loss_every must be an integer >= 1, got 0"),
        ({"n_components": 2, "block_rows": 0}, r"block_rows must be an integer >= 1, got 0"),
        ({"n_components": 2, "init": "nndsvd"}, r"init must be one of 'spa', 'mean', 'random', got 'nndsvd'"),
        ({"n_components": 2, "abundance_start": "zeros"}, r"abundance_start must be one of 'constant', 'lstsq', got 'zeros'"),
        ({"n_components": 2, "n_jobs": 0}, r"n_jobs must be a positive integer, -1 \(one per core\) or None, got 0"),
        ({"n_components": 2, "fixed_spectra": ["dye"]}, r"fixed_spectra names unknown component 'dye'"),
        ({"n_components": 2, "fixed_spectra": [5]}, r"fixed_spectra names unknown component 5"),
    ],
)
def test_bad_parameter_is_rejected(data, params, match):
    n_components = params.pop("n_components")
    with pytest.raises(ValueError, match=match):
        SparseNMF(n_components, **params).fit(data[0])


def test_nan_reports_count_and_pixels(data):
    M = data[0].copy()
    M[3, 1] = np.nan
    M[7, 2] = np.inf
    M[7, 4] = np.nan
    with pytest.raises(ValueError, match=r"3 NaN or infinite values in 2 pixels \(pixel indices 3, 7\)"):
        SparseNMF(3).fit(M)


def test_nan_message_lists_first_pixels_only(data):
    M = data[0].copy()
    M[10:20, 0] = np.nan
    with pytest.raises(ValueError, match=r"pixel indices 10, 11, 12, 13, 14, \.\.\."):
        SparseNMF(3).fit(M)


@pytest.mark.parametrize(
    ("M", "match"),
    [
        (np.ones((4, 5, 6)), r"2-D array \(n_pixels, n_wavelengths\), got shape \(4, 5, 6\)"),
        (np.array([["a", "b"], ["c", "d"]]), r"must hold numbers, got dtype <U1"),
        (np.ones((1, 5)), r"at least 2 pixels"),
        (np.zeros((10, 5)), r"zero everywhere"),
        (np.ones((10, 2)), r"n_components=3 exceeds what data of shape \(10, 2\) support \(at most .* = 2\)"),
    ],
)
def test_bad_data_is_rejected(M, match):
    with pytest.raises(ValueError, match=match):
        SparseNMF(3).fit(M)


def test_negative_values_are_clipped_and_counted(data):
    M = data[0].copy()
    M[:4, 0] = -1.0
    model = SparseNMF(3, max_iter=20, tol=0)
    with pytest.warns(DataWarning, match=r"4 negative values .* clipped to 0"):
        A = model.fit_transform(M)
    assert model.n_clipped_ == 4
    assert A.min() >= 0
    assert data[0][0, 0] >= 0, "the caller's array must not change"


@pytest.mark.parametrize(
    ("spectra_init", "match"),
    [
        (np.ones((3, 7)), r"spectra_init has shape \(3, 7\); expected .* = \(3, 12\)"),
        (-np.ones((3, 12)), r"finite and non-negative"),
        (np.vstack([np.ones(12), np.zeros(12), np.arange(12.0)]), r"initial spectra of \['component_1'\] are zero everywhere"),
        (np.vstack([np.ones(12), np.ones(12), np.arange(12.0)]), r"'component_0' and 'component_1' start from the same spectrum"),
        (
            np.vstack([np.ones(12), np.arange(12.0), np.ones(12) + np.arange(12.0)]),
            r"linearly dependent \(rank 2 for 3 distinct spectra\)",
        ),
    ],
)
def test_bad_initial_spectra_are_rejected(data, spectra_init, match):
    with pytest.raises(ValueError, match=match):
        SparseNMF(3).fit(data[0], spectra_init)


def test_bad_abundance_init_is_rejected(data):
    M, S = data
    with pytest.raises(ValueError, match=r"abundance_init has shape \(5, 3\); expected .* = \(60, 3\)"):
        SparseNMF(3).fit(M, S, abundance_init=np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"abundance_init must be finite and non-negative"):
        SparseNMF(3).fit(M, S, abundance_init=-np.ones((60, 3)))


def test_transform_needs_fit_and_matching_wavelengths(data):
    M, S = data
    with pytest.raises(RuntimeError, match=r"not fitted yet"):
        SparseNMF(3).transform(M)
    model = SparseNMF(3, max_iter=5, tol=0).fit(M, S)
    with pytest.raises(ValueError, match=r"M has 11 wavelengths, the model was fitted on 12"):
        model.transform(M[:, :11])


@pytest.mark.parametrize(
    ("saturation", "match"),
    [
        (np.ones(7, dtype=bool), r"saturation mask has shape \(7,\); expected \(n_pixels,\) = \(60,\)"),
        (np.ones(60), r"must be boolean, got dtype float64"),
        (np.nan, r"finite number or a boolean mask, got nan"),
    ],
)
def test_bad_saturation_is_rejected(data, saturation, match):
    with pytest.raises(ValueError, match=match):
        SparseNMF(3).fit(data[0], saturation=saturation)


def test_saturated_entries_are_left_out_and_estimated():
    M, A_true, S = separable_product(200, 24, 3, seed=21)
    clipped = M.copy()
    level = np.quantile(M, 0.995)
    saturated_entries = M >= level
    clipped[saturated_entries] = level
    model = SparseNMF(3, max_iter=3000, tol=1e-10, abundance_start="lstsq")
    with pytest.warns(DataWarning, match=r"saturated pixels \(of 200\) were left out of the fit"):
        A = model.fit_transform(clipped, S, saturation=level)
    saturated_pixels = saturated_entries.any(axis=1)
    assert model.saturated_pixels_.tolist() == saturated_pixels.tolist()
    # Estimated from their unsaturated wavelengths, the saturated pixels keep their true weights.
    truth = A_true * S.max(axis=1)
    np.testing.assert_allclose(A[saturated_pixels], truth[saturated_pixels], rtol=0.05, atol=0.02)


def test_saturated_pixel_mask_is_accepted():
    M, _, S = separable_product(100, 16, 3, seed=22)
    mask = np.zeros(100, dtype=bool)
    mask[[4, 9]] = True
    model = SparseNMF(3, max_iter=50, tol=0)
    with pytest.warns(DataWarning, match=r"2 saturated pixels"):
        A = model.fit_transform(M, S, saturation=mask)
    assert A.shape == (100, 3)
    assert np.all(np.isfinite(A))


def test_too_many_saturated_pixels_is_an_error():
    M, _, _ = separable_product(10, 8, 2, seed=23)
    with pytest.raises(ValueError, match=r"10 of 10 pixels are saturated"):
        SparseNMF(2).fit(M, saturation=0.0)
