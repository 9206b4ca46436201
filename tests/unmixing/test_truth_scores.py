"""compare_to_truth on synthetic maps and spectra with known errors, and the "auto" rule's statistics."""

import numpy as np
import pytest

from fluoscan.tests.unmixing.synthetic import mouse_scene
from fluoscan.unmixing.metrics import compare_to_truth
from fluoscan.unmixing.sparsity import AUTO_THRESHOLD_SIGMAS, noise_threshold


@pytest.fixture
def scene():
    A, S, _ = mouse_scene()
    return A, S


def test_exact_estimate_scores_perfectly(scene):
    A, S = scene
    scores = compare_to_truth(A, S, A, S)
    np.testing.assert_allclose(scores.spectral_angle, 0.0, atol=1e-6)
    np.testing.assert_allclose(scores.correlation, 1.0)
    assert scores.background_error == pytest.approx(0.0)
    assert scores.background_worst == pytest.approx(0.0)


def test_scale_moves_between_map_and_spectrum(scene):
    A, S = scene
    factors = np.array([2.0, 0.5, 3.0])
    scores = compare_to_truth(A, S, A * factors, S / factors[:, None])
    assert scores.background_error == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(scores.correlation, 1.0)


def test_components_are_matched(scene):
    A, S = scene
    order = [2, 0, 1]
    scores = compare_to_truth(A, S, A[..., order], S[order], names=["autofluorescence", "icg_lnp", "af750"])
    assert scores.order.tolist() == [1, 2, 0]
    np.testing.assert_allclose(scores.correlation, 1.0)
    assert scores.names == ["autofluorescence", "icg_lnp", "af750"]


def test_holes_at_marker_sites(scene):
    A, S = scene
    estimate = A.copy()
    sites = (A[..., 1] > 0) | (A[..., 2] > 0)
    estimate[sites, 0] *= 0.9
    scores = compare_to_truth(A, S, estimate, S)
    assert scores.n_sites == int(sites.sum())
    assert scores.background_error == pytest.approx(-0.1)
    assert scores.background_worst == pytest.approx(0.1)


def test_unacquired_lines_are_left_out(scene):
    A, S = scene
    estimate = A.copy()
    estimate[-3:] = np.nan
    scores = compare_to_truth(A, S, estimate, S)
    assert np.all(np.isfinite(scores.correlation))
    assert scores.background_error == pytest.approx(0.0)


def test_no_sites_gives_nan(scene):
    A, S = scene
    truth = A.copy()
    truth[..., 0] = 0.0
    scores = compare_to_truth(truth, S, A, S)
    assert scores.n_sites == 0
    assert np.isnan(scores.background_error)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"background": 3}, r"background index 3 is outside the 3 reference components"),
        ({"site_fraction": 0.0}, r"site_fraction must be in \(0, 1\], got 0.0"),
    ],
)
def test_rejects_bad_arguments(scene, kwargs, match):
    A, S = scene
    with pytest.raises(ValueError, match=match):
        compare_to_truth(A, S, A, S, **kwargs)


def test_too_few_estimates_are_rejected(scene):
    A, S = scene
    with pytest.raises(ValueError, match=r"2 estimated components cannot match 3 reference components"):
        compare_to_truth(A, S, A[..., :2], S[:2])


def test_auto_rule_statistics():
    rng = np.random.default_rng(0)
    column = np.abs(rng.normal(100.0, 10.0, 10_000))
    column[:20] = 5_000.0
    cut = noise_threshold(column)
    assert cut.background_median == pytest.approx(100.0, abs=1.0)
    assert cut.background_sd == pytest.approx(10.0, rel=0.05)
    assert cut.threshold == pytest.approx(cut.background_median + AUTO_THRESHOLD_SIGMAS * cut.background_sd)
    assert cut.peak == 5_000.0
    assert cut.n_kept == int(np.count_nonzero(column >= cut.threshold))
    # A normal background passes the 3-sigma cut about once in 740 pixels.
    assert 20 < cut.n_kept < 20 + 40


@pytest.mark.parametrize("sigmas", [1.0, 5.0])
def test_auto_rule_sigmas(sigmas):
    column = np.abs(np.random.default_rng(1).normal(100.0, 10.0, 1_000))
    column[:5] = 1_000.0
    cut = noise_threshold(column, sigmas=sigmas)
    assert cut.threshold == pytest.approx(cut.background_median + sigmas * cut.background_sd)


def test_auto_threshold_stops_at_peak():
    """Without a marker above the background, the cut keeps the maximum alone."""
    column = np.abs(np.random.default_rng(2).normal(100.0, 10.0, 1_000))
    cut = noise_threshold(column, sigmas=10.0)
    assert cut.threshold == cut.peak
    assert cut.n_kept == 1
