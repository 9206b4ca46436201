"""Scores of an unmixing result: spectral angle, matching, abundance error, map correlation, residuals."""

import numpy as np
import pytest

from fluoscan.unmixing import abundance_rmse, map_correlation, match_components, residual_map, spectral_angle
from fluoscan.unmixing.metrics import spectral_angle_matrix


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1.0, 0.0], [0.0, 2.0], np.pi / 2),
        ([1.0, 1.0], [3.0, 3.0], 0.0),
        ([1.0, 0.0], [1.0, 1.0], np.pi / 4),
        ([1.0, 0.0], [-1.0, 0.0], np.pi),
    ],
)
def test_spectral_angle_values(a, b, expected):
    assert spectral_angle(np.array(a), np.array(b)) == pytest.approx(expected, abs=1e-7)


def test_spectral_angle_broadcasts_rows():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    angles = spectral_angle(a, np.array([1.0, 0.0]))
    assert angles == pytest.approx([0.0, np.pi / 2])
    assert spectral_angle_matrix(a, a) == pytest.approx(np.array([[0.0, np.pi / 2], [np.pi / 2, 0.0]]))


def test_spectral_angle_of_zero_is_nan():
    assert np.isnan(spectral_angle(np.zeros(3), np.ones(3)))


def test_spectral_angle_rejects_length_mismatch():
    with pytest.raises(ValueError, match=r"3 and 4 wavelengths"):
        spectral_angle(np.ones(3), np.ones(4))


def test_match_undoes_permutation_and_scale():
    rng = np.random.default_rng(0)
    reference = rng.random((4, 30))
    permutation = np.array([2, 0, 3, 1])
    estimate = 5.0 * reference[permutation]
    matching = match_components(reference, estimate)
    assert matching.reference.tolist() == [0, 1, 2, 3]
    assert matching.estimate.tolist() == np.argsort(permutation).tolist()
    assert matching.mean_angle == pytest.approx(0.0, abs=1e-7)
    assert np.array_equal(estimate[matching.order(4)], 5.0 * reference)


def test_match_with_fewer_estimates_leaves_unmatched():
    reference = np.eye(3)
    matching = match_components(reference, reference[[2]])
    assert matching.order(3).tolist() == [-1, -1, 0]


def test_match_rejects_zero_spectrum():
    with pytest.raises(ValueError, match=r"zero everywhere"):
        match_components(np.eye(2), np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_abundance_rmse_after_unit_sum():
    reference = np.array([[1.0, 0.0], [0.5, 0.5]])
    estimate = np.array([[10.0, 0.0], [1.0, 3.0]])
    assert abundance_rmse(reference, estimate) == pytest.approx(np.sqrt((0.25**2 * 2) / 4))
    assert abundance_rmse(reference, estimate, sum_to_one=False) > 1.0


def test_abundance_rmse_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"reference \(2, 2\), estimate \(2, 3\)"):
        abundance_rmse(np.ones((2, 2)), np.ones((2, 3)))


def test_map_correlation_per_component():
    rng = np.random.default_rng(1)
    reference = rng.random((10, 8, 2))
    estimate = np.stack([3.0 * reference[..., 0] + 1.0, -reference[..., 1]], axis=-1)
    assert map_correlation(reference, estimate) == pytest.approx([1.0, -1.0])


def test_map_correlation_of_constant_map_is_nan():
    reference = np.ones((5, 1))
    assert np.isnan(map_correlation(reference, np.arange(5.0)[:, None])[0])


def test_residual_map_absolute_and_relative():
    S = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    A = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    M = A @ S
    M[0, 2] = 3.0
    absolute = residual_map(M, A, S)
    assert absolute.tolist() == [3.0, 0.0, 0.0]
    relative = residual_map(M, A, S, relative=True)
    assert relative[0] == pytest.approx(3.0 / np.sqrt(11.0))
    assert relative[1] == 0.0
    assert np.isnan(relative[2])


def test_residual_map_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"M \(3, 3\), A \(3, 2\), S \(2, 4\)"):
        residual_map(np.ones((3, 3)), np.ones((3, 2)), np.ones((2, 4)))
