"""Unmixing of a real hyperspectral cube with reference endmembers (Samson: soil, tree, water).

The data live outside the repository, in ../shared/data/hyperspectral/Samson.mat; the tests skip
when that folder is absent. Plain Frobenius multiplicative updates from random starts reach a mean
spectral angle (SAD) of about 0.23 rad on this cube.
"""

import warnings

import numpy as np
import pytest
from scipy.io import loadmat

from fluoscan.unmixing import ConvergenceWarning, SparseNMF, abundance_rmse, match_components


@pytest.fixture
def samson(shared_data):
    contents = loadmat(shared_data / "hyperspectral" / "Samson.mat")
    M = np.ascontiguousarray(contents["Y"].T)  # (pixels, bands), pixels in MATLAB column-major order
    reference_abundance = contents["S_GT"].reshape(-1, 3, order="F")
    return M, contents["GT"], reference_abundance


@pytest.mark.parametrize(
    ("loss", "dtype", "max_sad", "max_rmse"),
    [
        ("frobenius", np.float64, 0.10, 0.08),
        ("frobenius", np.float32, 0.10, 0.08),
        ("kullback-leibler", np.float64, 0.10, 0.08),
    ],
)
def test_samson_spectra_and_maps(samson, loss, dtype, max_sad, max_rmse):
    M, reference_spectra, reference_abundance = samson
    # Spectra from the purest pixels (SPA) and least-squares starting weights; see SparseNMF.
    model = SparseNMF(3, init="spa", abundance_start="lstsq", loss=loss, max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        A = model.fit_transform(M.astype(dtype))
    matching = match_components(reference_spectra, model.components_)
    assert matching.mean_angle <= max_sad
    assert abundance_rmse(reference_abundance, A[:, matching.order(3)]) <= max_rmse
