"""SparseNMF: updates, losses, sparsity, fixed spectra and agreement with scikit-learn."""

import itertools
import warnings

import numpy as np
import pytest

from fluoscan.tests.unmixing.synthetic import random_product, separable_product
from fluoscan.unmixing import ConvergenceWarning, DataWarning, SparseNMF, hoyer_sparsity, match_components

LOSSES = ["frobenius", "kullback-leibler"]
SPARSITY_OPTIONS = [None, [None, 0.7, 0.7], [None, "auto", 0.5], 0.3]


def _quiet_fit(model, M, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit_transform(M, *args, **kwargs)


@pytest.mark.parametrize(
    ("loss", "sparsity", "dtype", "abundance_start", "fixed"),
    list(itertools.product(LOSSES, SPARSITY_OPTIONS, [np.float32, np.float64], ["constant", "lstsq"], [None, [0]])),
)
def test_output_non_negative_for_every_option(loss, sparsity, dtype, abundance_start, fixed):
    M, _, _ = separable_product(120, 16, 3, seed=1)
    model = SparseNMF(3, sparsity=sparsity, loss=loss, max_iter=25, abundance_start=abundance_start, fixed_spectra=fixed)
    A = _quiet_fit(model, M.astype(dtype))
    assert A.dtype == dtype
    assert model.components_.dtype == dtype
    assert np.all(np.isfinite(A))
    assert A.min() >= 0
    assert model.components_.min() >= 0
    assert np.all(np.isfinite(model.loss_history_))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("abundance_start", ["constant", "lstsq"])
def test_loss_never_increases_without_sparsity(loss, abundance_start):
    M, _, _ = random_product(150, 20, 3, seed=2)
    M += 0.05 * np.random.default_rng(0).random(M.shape)
    model = SparseNMF(3, loss=loss, max_iter=150, tol=0, loss_every=1, abundance_start=abundance_start)
    model.fit(M)
    history = model.loss_history_
    assert history.size == 151
    assert np.all(np.diff(history) <= 1e-10 * history[0])
    assert history[-1] < 0.5 * history[0]


def test_float32_loss_never_increases_at_its_precision():
    M, _, _ = random_product(400, 30, 3, seed=3, dtype=np.float32)
    M += np.float32(0.05)
    model = SparseNMF(3, max_iter=200, tol=0, loss_every=5)
    model.fit(M)
    assert np.all(np.diff(model.loss_history_) <= 1e-5 * model.loss_history_[0])


@pytest.mark.parametrize("loss", LOSSES)
def test_recovers_separable_product(loss):
    M, _, S = separable_product(300, 40, 3)
    model = SparseNMF(3, loss=loss, max_iter=1000, tol=0, loss_every=50)
    A = model.fit_transform(M)
    relative_error = np.linalg.norm(M - A @ model.components_) / np.linalg.norm(M)
    assert relative_error < 2e-3
    assert match_components(S, model.components_).angle.max() < 0.02


def test_recovers_product_exactly_from_true_spectra():
    M, A_true, S = separable_product(300, 40, 3)
    model = SparseNMF(3, max_iter=2000, tol=0, abundance_start="lstsq")
    A = model.fit_transform(M, S)
    assert np.linalg.norm(M - A @ model.components_) / np.linalg.norm(M) < 1e-5
    scale = S.max(axis=1)
    np.testing.assert_allclose(A, A_true * scale, rtol=0, atol=1e-4)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("sparsity", [None, [None, 0.6, 0.6]])
def test_float32_and_float64_agree(loss, sparsity):
    M, _, _ = separable_product(200, 24, 3, seed=4)
    results = {}
    for dtype in (np.float32, np.float64):
        model = SparseNMF(3, loss=loss, sparsity=sparsity, max_iter=60, tol=0)
        A = model.fit_transform(M.astype(dtype))
        results[dtype] = (A.astype(np.float64), model.components_.astype(np.float64))
    np.testing.assert_allclose(results[np.float32][1], results[np.float64][1], rtol=0, atol=2e-4)
    np.testing.assert_allclose(results[np.float32][0], results[np.float64][0], rtol=0, atol=2e-3 * results[np.float64][0].max())


@pytest.mark.parametrize(("loss", "beta_loss"), [("frobenius", "frobenius"), ("kullback-leibler", "kullback-leibler")])
def test_matches_sklearn_multiplicative_updates(loss, beta_loss):
    sklearn_nmf = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(5)
    M = rng.random((80, 12)) + 0.1
    S0 = rng.random((3, 12)) + 0.1
    A0 = rng.random((80, 3)) + 0.1

    model = SparseNMF(3, loss=loss, max_iter=40, tol=0)
    A = model.fit_transform(M, S0, abundance_init=A0)

    # scikit-learn updates W, then H. On the transposed problem Mᵀ ≈ Sᵀ Aᵀ its W is our Sᵀ, so its
    # order (S first, then A) and its rules are ours.
    reference = sklearn_nmf.NMF(
        n_components=3, solver="mu", init="custom", beta_loss=beta_loss, max_iter=40, tol=0, alpha_W=0.0, alpha_H=0.0
    )
    S_t = reference.fit_transform(M.T, W=S0.T.copy(), H=A0.T.copy())
    S_reference, A_reference = S_t.T, reference.components_.T
    peaks = S_reference.max(axis=1)
    np.testing.assert_allclose(model.components_, S_reference / peaks[:, None], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(A, A_reference * peaks[None, :], rtol=1e-9, atol=1e-12)


def test_sparsity_targets_are_reached():
    M, _, _ = separable_product(400, 30, 3, seed=6)
    targets = [None, 0.6, 0.8]
    model = SparseNMF(3, sparsity=targets, max_iter=200)
    A = _quiet_fit(model, M)
    assert np.isnan(model.sparsity_[0])
    assert model.sparsity_[1] == pytest.approx(0.6, abs=0.02)
    assert model.sparsity_[2] == pytest.approx(0.8, abs=0.02)
    assert hoyer_sparsity(A[:, 2]) == pytest.approx(model.sparsity_[2])
    assert model.n_zeroed_[0] == 0
    assert model.n_zeroed_[2] > model.n_zeroed_[1] > 0


def test_wrongly_zeroed_pixel_grows_back():
    # Pixel 0 carries most of component 1 but starts almost at 0, so the first threshold cuts it.
    M, A_true, S = separable_product(200, 30, 3, seed=7)
    A_true[:, 1] = 0.0
    A_true[:10, 1] = 1.0
    M = A_true @ S
    start = A_true + 0.1
    start[0, 1] = 1e-6
    model = SparseNMF(3, sparsity=[None, 0.8, None], max_iter=300, fixed_spectra=[True, True, True])
    A = _quiet_fit(model, M, S, abundance_init=start)
    assert A[0, 1] > 0.5 * A[1, 1]


def test_wrongly_zeroed_pixel_is_cut_at_start():
    # Guards the test above: the tiny start value is below the first threshold.
    M, A_true, S = separable_product(200, 30, 3, seed=7)
    A_true[:, 1] = 0.0
    A_true[:10, 1] = 1.0
    start = A_true + 0.1
    start[0, 1] = 1e-6
    model = SparseNMF(3, sparsity=[None, 0.8, None], max_iter=1, tol=0, fixed_spectra=[True, True, True])
    model.fit(A_true @ S, S, abundance_init=start)
    assert model.thresholds_[1].threshold > 1e-6


def test_fixed_spectra_stay_put():
    M, _, S = separable_product(150, 20, 3, seed=8)
    init = S * np.array([[1.0], [1.3], [1.0]])
    model = SparseNMF(3, fixed_spectra=["component_1"], max_iter=50, tol=0)
    model.fit(M, init)
    np.testing.assert_array_equal(model.components_[1], init[1])
    assert not np.allclose(model.components_[0] * init[0].max(), init[0])
    assert model.fixed_.tolist() == [False, True, False]


def test_transform_recovers_weights_with_fitted_spectra():
    M, A_true, S = separable_product(150, 20, 3, seed=9)
    model = SparseNMF(3, max_iter=2000, tol=1e-9)
    model.fit(M, S)
    A = model.transform(M[:40])
    np.testing.assert_allclose(A @ model.components_, M[:40], rtol=0, atol=1e-3 * M.max())


def test_convergence_warning_names_max_iter():
    M, _, _ = random_product(60, 10, 2, seed=10)
    with pytest.warns(ConvergenceWarning, match=r"max_iter=3"):
        SparseNMF(2, max_iter=3).fit(M)


def test_converges_and_stops_early():
    M, _, S = separable_product(100, 20, 3, seed=11)
    model = SparseNMF(3, max_iter=5000, tol=1e-4)
    model.fit(M, S)
    assert model.converged_
    assert model.n_iter_ < 5000
    assert model.loss_history_.size == model.n_iter_ + 1


@pytest.mark.parametrize("init", ["spa", "random"])
def test_same_random_state_gives_same_fit(init):
    M, _, _ = random_product(100, 15, 3, seed=12)
    first = SparseNMF(3, init=init, random_state=4, max_iter=20, tol=0).fit(M).components_
    second = SparseNMF(3, init=init, random_state=4, max_iter=20, tol=0).fit(M).components_
    np.testing.assert_array_equal(first, second)


def test_random_init_depends_on_seed():
    M, _, _ = random_product(100, 15, 3, seed=12)
    first = SparseNMF(3, init="random", random_state=1, max_iter=5, tol=0).fit(M).spectra_init_
    second = SparseNMF(3, init="random", random_state=2, max_iter=5, tol=0).fit(M).spectra_init_
    assert not np.allclose(first, second)


def test_zero_pixels_and_wavelengths_stay_zero():
    M, _, _ = separable_product(80, 12, 2, seed=13)
    M[5] = 0.0
    M[:, 3] = 0.0
    model = SparseNMF(2, max_iter=50, tol=0, loss_every=1)
    for loss in LOSSES:
        model.loss = loss
        A = model.fit_transform(M)
        assert np.all(np.isfinite(A))
        assert np.all(A[5] == 0)
        assert np.all(model.components_[:, 3] == 0)


def test_identical_start_with_different_targets_separates():
    M, _, _ = separable_product(200, 20, 2, seed=14)
    mean = M.mean(axis=0)
    model = SparseNMF(2, sparsity=[None, 0.7], max_iter=100)
    _quiet_fit(model, M, np.stack([mean, mean]))
    assert not np.allclose(model.components_[0], model.components_[1])


def test_get_params_and_repr():
    model = SparseNMF(3, sparsity=0.5, loss="kullback-leibler")
    assert model.get_params()["sparsity"] == 0.5
    assert repr(model) == "SparseNMF(n_components=3, sparsity=0.5, loss='kullback-leibler')"


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("sparsity", [None, [None, 0.6, "auto"]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_give_the_same_fit(loss, sparsity, dtype):
    M, _, _ = separable_product(500, 20, 3, seed=15)
    M = M.astype(dtype)
    fits = []
    for n_jobs in (1, 3):
        model = SparseNMF(3, loss=loss, sparsity=sparsity, max_iter=40, tol=0, block_rows=64, n_jobs=n_jobs)
        fits.append((model.fit_transform(M), model.components_, model.loss_history_))
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(fits[1][1], fits[0][1], rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(fits[1][0], fits[0][0], rtol=tolerance, atol=tolerance * M.max())
    np.testing.assert_allclose(fits[1][2], fits[0][2], rtol=tolerance)
