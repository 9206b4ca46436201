"""Acceptance of the unmixing on simulated scans of the mouse phantom, against its ground truth.

Limits: every map's Pearson r >= 0.98 against the truth, every spectrum within 0.05 rad of the
truth, and the autofluorescence map at the marker sites (pixels where a marker's true weight is at
least half its maximum) within 5 % of the truth on average. Maps are compared in counts at the
peak of their spectrum (see compare_to_truth). The truth is what the camera records: marker spectra
reshaped by the tissue above the tubes, and one autofluorescence component standing for skin and
gut chlorophyll together (phantom_cases.py).

Three methods run on each phantom setting (phantom_cases.py): "published", the published method
(sparsity target 0.9 for both markers, constant starting weights); "auto", the "auto"
sparsity rule with least-squares starting weights; and "auto+sites", "auto" followed by the
interpolation of the autofluorescence at the marker sites. DOCUMENTED_FAILURES lists the criteria
that a method misses on a setting, as measured. The test asserts that they still fail, so that a
change that fixes one also updates docs/unmixing.md and bench/RESULTS.md.
"""

import shutil
import warnings

import numpy as np
import pytest
import zarr

from fluoscan.tests.unmixing.phantom_cases import (
    MAX_BACKGROUND_ERROR,
    MAX_SPECTRAL_ANGLE_RAD,
    METHODS,
    MIN_CORRELATION,
    PHANTOM_SETTINGS,
    scan_phantom,
    store_scores,
)
from fluoscan.unmixing import ConvergenceWarning, DataWarning, unmix_store

# Measured with the fast raster of phantom_cases.py (figures in bench/RESULTS.md).
DOCUMENTED_FAILURES = {
    # The marker spectra, started from the library, do not reach what the tissue makes of them, and
    # the autofluorescence map takes the difference at the sites: +8.6 % ("published"), +11 % ("auto").
    ("default", "published"): {"background"},
    ("default", "auto"): {"background"},
    ("noisier", "published"): {"background"},
    ("noisier", "auto"): {"background"},
    ("noisiest", "published"): {"background"},
    ("noisiest", "auto"): {"background"},
    # Tubes 5 mm deep are 4 times dimmer and 4 times wider, so the af750 map takes up part of the
    # gut's chlorophyll (r 0.86 to 0.88, af750 0.13 to 0.23 rad). Target 0.9 also cuts the ICG map
    # short (r 0.87). The sites are fainter than the tissue under them, so "auto+sites" keeps the fit.
    ("deeper", "published"): {"correlation", "spectra"},
    ("deeper", "auto"): {"correlation", "spectra"},
    ("deeper", "auto+sites"): {"correlation", "spectra"},
    # Markers at 3 % brightness: the af750 map turns into the gut's chlorophyll (r 0.56 and 0.07).
    ("dimmer", "published"): {"correlation", "spectra"},
    ("dimmer", "auto"): {"correlation", "spectra"},
    ("dimmer", "auto+sites"): {"correlation", "spectra"},
}
CRITERIA = ("correlation", "spectra", "background")


@pytest.fixture(scope="module")
def unmixed(tmp_path_factory):
    """Return a function (setting, method) -> (unmixed store, TruthScores); each scan and fit runs once."""
    scans, results = {}, {}

    def run(setting, method):
        if setting not in scans:
            scans[setting] = scan_phantom(tmp_path_factory.mktemp("phantom") / f"{setting}.zarr", setting)
        if (setting, method) not in results:
            # One copy per method, so that each keeps its own unmixing/ group.
            path = tmp_path_factory.mktemp("unmixed") / f"{setting}-{method}.zarr"
            shutil.copytree(scans[setting], path)
            with warnings.catch_warnings():
                # The demo configuration caps the fit at 1000 iterations, which some cases reach.
                warnings.simplefilter("ignore", ConvergenceWarning)
                # The ICG tube saturates a few pixels of the default phantom, by design.
                warnings.filterwarnings("ignore", ".*saturated pixels", DataWarning)
                unmix_store(path, **METHODS[method])
            results[(setting, method)] = (path, store_scores(path))
        return results[(setting, method)]

    return run


def criterion_figures(scores, criterion):
    """Return (passes, description) of one acceptance criterion."""
    if criterion == "correlation":
        return bool(np.all(scores.correlation >= MIN_CORRELATION)), f"r = {np.round(scores.correlation, 4).tolist()}"
    if criterion == "spectra":
        return bool(np.all(scores.spectral_angle <= MAX_SPECTRAL_ANGLE_RAD)), f"SAD = {np.round(scores.spectral_angle, 4).tolist()} rad"
    passes = abs(scores.background_error) <= MAX_BACKGROUND_ERROR
    return passes, f"background at {scores.n_sites} marker sites off by {scores.background_error:+.2%}"


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("setting", list(PHANTOM_SETTINGS))
def test_phantom_acceptance(unmixed, setting, method, criterion):
    _, scores = unmixed(setting, method)
    passes, figures = criterion_figures(scores, criterion)
    if criterion in DOCUMENTED_FAILURES.get((setting, method), ()):
        assert not passes, f"{method} on {setting} now meets the {criterion} limit ({figures}); update the documented failure"
    else:
        assert passes, f"{method} on {setting} misses the {criterion} limit: {figures}"


@pytest.mark.parametrize("setting", ["default", "deeper", "noisiest"])
def test_auto_records_its_evidence(unmixed, setting):
    path, _ = unmixed(setting, "auto")
    group = zarr.open_group(str(path), mode="r")["unmixing"]
    evidence = group.attrs["auto_sparsity"]
    abundance = group["abundance"][:]
    assert evidence[0] is None
    for p in (1, 2):
        record = evidence[p]
        column = abundance[..., p].ravel()
        nonzero_weights = column[column > 0]
        assert record["threshold"] == pytest.approx(record["background_median"] + 3 * record["background_sd"], rel=1e-6)
        # Saturated pixels are estimated after the fit, so the cut counted only the others.
        assert record["n_kept"] <= nonzero_weights.size <= record["n_kept"] + group.attrs["n_saturated_pixels"]
        assert nonzero_weights.min() >= record["threshold"] * (1 - 1e-5)


@pytest.mark.parametrize("setting", ["deeper", "noisiest"])
def test_auto_evidence_gives_achieved_sparsity(unmixed, setting):
    path, _ = unmixed(setting, "auto")
    attrs = zarr.open_group(str(path), mode="r")["unmixing"].attrs
    # With saturated pixels the achieved sparsity would include their weights, estimated after the cut.
    assert attrs["n_saturated_pixels"] == 0
    for p in (1, 2):
        assert attrs["auto_sparsity"][p]["sparsity"] == pytest.approx(attrs["sparsity_achieved"][p], abs=1e-5)


def test_auto_sparsity_follows_tube_size(unmixed):
    """Deeper tubes are blurred over more pixels, so the auto rule chooses a lower sparsity."""
    default_path, _ = unmixed("default", "auto")
    deeper_path, _ = unmixed("deeper", "auto")
    default = zarr.open_group(str(default_path), mode="r")["unmixing"].attrs["auto_sparsity"]
    deeper = zarr.open_group(str(deeper_path), mode="r")["unmixing"].attrs["auto_sparsity"]
    for p in (1, 2):
        assert deeper[p]["sparsity"] < default[p]["sparsity"] - 0.05


@pytest.mark.parametrize(("method", "expected"), [("auto", "fit"), ("auto+sites", "interpolate")])
def test_site_background_recorded(unmixed, method, expected):
    path, _ = unmixed("default", method)
    record = zarr.open_group(str(path), mode="r")["unmixing"].attrs["site_background"]
    assert record["method"] == expected


def test_site_background_covers_both_tubes(unmixed):
    path, _ = unmixed("default", "auto+sites")
    record = zarr.open_group(str(path), mode="r")["unmixing"].attrs["site_background"]
    assert record["n_regions"] == 2
    assert record["skipped_regions"] == []


def test_site_background_keeps_faint_sites(unmixed):
    """Deep tubes are fainter than the tissue under them, where interpolation would cost more than it gains."""
    path, _ = unmixed("deeper", "auto+sites")
    record = zarr.open_group(str(path), mode="r")["unmixing"].attrs["site_background"]
    assert record["n_regions"] == 0
    assert len(record["faint_regions"]) == 2
