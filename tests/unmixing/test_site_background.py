"""The site background step: the autofluorescence under the markers, interpolated from the tissue around them."""

import numpy as np
import pytest
import zarr

from fluoscan.acquisition.store import ScanStatus, ScanStore
from fluoscan.tests.unmixing.synthetic import MOUSE_COMPONENTS, mouse_scene
from fluoscan.unmixing import spectral_angle, unmix_store
from fluoscan.unmixing.site_background import SiteBackground, refine_site_background, site_mask

PITCH_MM = 0.5
SHAPE = (30, 40)


def scene(seed=0, marker_peak=8000.0):
    """Return M, the true (A, S), and an equally good factorization with a biased marker spectrum.

    The background is a smooth field whose spectrum drifts across the image; the marker is a bright
    blob. The biased factorization moves 0.15 of the background spectrum into the marker spectrum
    and takes the matching amount out of the background map, as the sparse NMF can.
    """
    ny, nx = SHAPE
    grid = np.linspace(0.0, 1.0, 60)
    red = np.exp(-0.5 * ((grid - 0.3) / 0.25) ** 2)
    blue = np.exp(-0.5 * ((grid - 0.1) / 0.1) ** 2)
    marker = np.exp(-0.5 * ((grid - 0.6) / 0.08) ** 2)
    yy, xx = np.mgrid[0:ny, 0:nx] * PITCH_MM
    level = 1000.0 * (1.0 + 0.1 * np.sin(yy / 6.0) + 0.05 * xx / xx.max())
    blue_share = 0.3 * xx / xx.max()
    blob = marker_peak * np.exp(-((yy - 7.0) ** 2 + (xx - 10.0) ** 2) / (2 * 1.0**2))

    # Exact product with per-pixel background spectra, which no single spectrum reproduces.
    background = level[..., None] * ((1 - blue_share)[..., None] * red + blue_share[..., None] * blue)
    M = (background + blob[..., None] * marker).reshape(-1, grid.size)
    M += np.random.default_rng(seed).normal(0.0, 1.0, M.shape)

    mean_background = background.reshape(-1, grid.size).mean(axis=0)
    S_true = np.vstack([mean_background / mean_background.max(), marker])
    A_true = np.column_stack([background.reshape(-1, grid.size) @ S_true[0] / (S_true[0] @ S_true[0]), blob.ravel()])

    biased_marker = marker + 0.15 * S_true[0]
    scale = biased_marker.max()
    S_fit = np.vstack([S_true[0], biased_marker / scale])
    A_fit = np.column_stack([np.clip(A_true[:, 0] - 0.15 * A_true[:, 1], 0.0, None), A_true[:, 1] * scale])
    return M, (A_true, S_true), (A_fit, S_fit)


def refine(M, A, S, **options):
    ny, nx = SHAPE
    arguments = {
        "markers": [1],
        "fixed": [False, False],
        "shape": SHAPE,
        "y_mm": np.arange(ny) * PITCH_MM,
        "x_mm": np.arange(nx) * PITCH_MM,
    }
    return refine_site_background(M, A, S, **(arguments | options))


def site_pixels(A_true):
    return A_true[:, 1] >= 0.5 * A_true[:, 1].max()


def test_recovers_marker_spectrum():
    M, (A_true, S_true), (A_fit, S_fit) = scene()
    refined = refine(M, A_fit, S_fit)
    assert spectral_angle(S_fit[1], S_true[1]) > 0.1
    assert spectral_angle(refined.spectra[1], S_true[1]) < 0.01


def test_fills_background_hole():
    M, (A_true, S_true), (A_fit, S_fit) = scene()
    refined = refine(M, A_fit, S_fit)
    sites = site_pixels(A_true)
    before = A_fit[sites, 0].mean() / A_true[sites, 0].mean() - 1
    after = refined.abundance[sites, 0].mean() / A_true[sites, 0].mean() - 1
    assert before < -0.5
    assert abs(after) < 0.02


def test_keeps_weights_away_from_sites():
    M, _, (A_fit, S_fit) = scene()
    refined = refine(M, A_fit, S_fit)
    outside = ~site_mask(A_fit, S_fit, [1], SHAPE, 0.02).ravel()
    assert np.array_equal(refined.abundance[outside], A_fit[outside])


def test_reports_one_region():
    M, _, (A_fit, S_fit) = scene()
    refined = refine(M, A_fit, S_fit)
    assert refined.n_regions == 1
    assert refined.n_site_pixels == int(site_mask(A_fit, S_fit, [1], SHAPE, 0.02).sum())
    assert refined.skipped_regions == []


def test_faint_region_is_left_as_fitted():
    M, _, (A_fit, S_fit) = scene(marker_peak=200.0)
    refined = refine(M, A_fit, S_fit)
    assert refined.n_regions == 0
    assert len(refined.faint_regions) == 1
    assert refined.faint_regions[0]["contrast"] < 0.5
    assert np.array_equal(refined.abundance, A_fit)
    assert np.array_equal(refined.spectra, S_fit)


def test_marker_outside_regions_keeps_spectrum():
    """A second marker with no light in the interpolated region keeps its fitted spectrum."""
    M, _, (A_fit, S_fit) = scene()
    other = np.exp(-0.5 * ((np.linspace(0.0, 1.0, S_fit.shape[1]) - 0.85) / 0.05) ** 2)
    A_two = np.column_stack([A_fit, np.zeros(A_fit.shape[0])])
    A_two[0, 2] = 1.0
    refined = refine(M, A_two, np.vstack([S_fit, other]), markers=[1, 2], fixed=[False, False, False])
    assert np.array_equal(refined.spectra[2], other)


def test_fixed_marker_spectrum_is_kept():
    M, _, (A_fit, S_fit) = scene()
    refined = refine(M, A_fit, S_fit, fixed=[False, True])
    assert np.array_equal(refined.spectra, S_fit)


def test_without_markers_changes_nothing():
    M, _, (A_fit, S_fit) = scene()
    refined = refine(M, A_fit, S_fit, markers=[])
    assert np.array_equal(refined.abundance, A_fit)
    assert np.array_equal(refined.spectra, S_fit)
    assert refined.n_regions == 0


def test_region_without_ring_is_skipped():
    M, _, (A_fit, S_fit) = scene()
    refined = refine(M, A_fit, S_fit, ring_mm=0.1)
    assert refined.n_regions == 0
    assert refined.skipped_regions == [int(site_mask(A_fit, S_fit, [1], SHAPE, 0.02).sum())]
    assert np.array_equal(refined.abundance, A_fit)


def test_saturated_entries_are_ignored():
    M, (A_true, S_true), (A_fit, S_fit) = scene()
    saturated = np.zeros(M.shape, dtype=bool)
    centre = np.argmax(A_true[:, 1])
    saturated[centre, 30:40] = True
    M = M.copy()
    M[centre, 30:40] = 0.5 * M[centre, 30:40]
    refined = refine(M, A_fit, S_fit, saturated=saturated)
    assert spectral_angle(refined.spectra[1], S_true[1]) < 0.01


# One pixel grows into a cross of 5; a 3 x 3 square into a 5 x 5 square without its 4 corners.
@pytest.mark.parametrize(("fraction", "n_pixels"), [(1.0, 5), (0.5, 21)])
def test_site_mask_grows_by_one_pixel(fraction, n_pixels):
    A = np.zeros((SHAPE[0] * SHAPE[1], 2))
    grid = A[:, 1].reshape(SHAPE)
    grid[9:12, 9:12] = 0.6
    grid[10, 10] = 1.0
    S = np.ones((2, 4))
    assert site_mask(A, S, [1], SHAPE, fraction).sum() == n_pixels


# ------------------------------------------------------------------ through unmix_store


def write_scan(path):
    """Write a small simulated mouse scan (Poisson counts over a dark level), with markers 5 times brighter than the tissue."""
    A, S, wavelengths_nm = mouse_scene(seed=3)
    A[..., 1:] *= 5.0
    ny, nx, _ = A.shape
    counts = np.random.default_rng(3).poisson(A @ S + 300).astype(np.uint16)
    unmixing = {
        "components": [
            {"name": "autofluorescence", "spectrum": "library:autofluorescence"},
            {"name": "icg_lnp", "spectrum": "library:icg_lnp", "sparsity": "auto"},
            {"name": "af750", "spectrum": "library:af750", "sparsity": "auto"},
        ],
        "max_iter": 200,
    }
    store = ScanStore.create(
        path,
        n_lines=ny,
        wavelengths_nm=wavelengths_nm,
        x=np.arange(nx) * 0.5,
        x_units="mm",
        attrs={"config": {"unmixing": unmixing}},
    )
    store.write_dark(np.full((3, nx, wavelengths_nm.size), 300, dtype=np.uint16))
    for y in range(ny):
        store.write_line(y, counts[y], y_mm=0.5 * y, time_s=1.0e9 + y, laser_power_mw=40.0)
    store.write_truth(A, S, list(MOUSE_COMPONENTS))
    store.set_status(ScanStatus.COMPLETE, "finished")
    return path


@pytest.fixture
def scan(tmp_path):
    return write_scan(tmp_path / "mouse.zarr")


@pytest.mark.filterwarnings("ignore::fluoscan.unmixing.nmf.ConvergenceWarning")
def test_store_records_interpolation(scan):
    unmix_store(scan, site_background="interpolate")
    group = zarr.open_group(str(scan), mode="r")["unmixing"]
    record = group.attrs["site_background"]
    assert record["method"] == SiteBackground.INTERPOLATE.value
    assert record["n_regions"] >= 2
    assert record["n_site_pixels"] > 0


@pytest.mark.filterwarnings("ignore::fluoscan.unmixing.nmf.ConvergenceWarning")
def test_store_residual_matches_written_result(scan):
    unmix_store(scan, site_background="interpolate")
    store = ScanStore.open(scan)
    group = store.group["unmixing"]
    M = store.read_cube(subtract_dark=True, dtype=np.float64)
    model = np.asarray(group["abundance"][:], dtype=np.float64) @ np.asarray(group["spectra"][:], dtype=np.float64)
    expected = np.linalg.norm(M - model, axis=-1)
    assert np.allclose(group["residual"][:], expected, rtol=1e-3, atol=1e-2)


@pytest.mark.filterwarnings("ignore::fluoscan.unmixing.nmf.ConvergenceWarning")
def test_store_default_keeps_fit(scan):
    unmix_store(scan)
    assert zarr.open_group(str(scan), mode="r")["unmixing"].attrs["site_background"] == {"method": "fit"}


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"site_background": "smooth"}, 'site_background must be one of "fit", "interpolate"'),
        ({"site_background": "interpolate", "backend": "dask"}, 'needs backend="numpy"'),
        ({"site_background": "interpolate", "loss": "kullback-leibler"}, 'needs loss="frobenius"'),
    ],
)
def test_store_rejects_bad_settings(scan, arguments, match):
    with pytest.raises(ValueError, match=match):
        unmix_store(scan, **arguments)
