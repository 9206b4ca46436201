"""Unmixing quality: the phantom against its ground truth, Samson against its reference spectra, a sweep.

1. Phantom table: each phantom setting of tests/unmixing/phantom_cases.py (default, deeper tubes,
   dimmer markers, noisier, noisiest, purified diet, and deeper and dimmer on a purified diet) is
   scanned once with the real scan procedure and unmixed with each method below. Printed per case: spectral angle (SAD) and map correlation r of every
   component against the truth, the autofluorescence error at the marker sites, the sparsity that
   the markers reached, and whether the acceptance limits hold (r >= 0.98, SAD <= 0.05 rad,
   autofluorescence at the sites within 5 %). Then the angle between each library spectrum, where
   the published method starts, and the truth.
2. Samson: the cube is imported with three components, whose spectra are picked from the data
   ("auto"), and unmixed from each starting weight. Printed: SAD against the reference spectra.
3. Sparsity sweep on the default phantom: zeroed pixels and the distance of each marker spectrum
   from its initialisation per target (``sweep_sparsity``), with the map correlation and the
   autofluorescence error against the truth, and the target the "auto" rule chose.

    python bench/bench_quality.py [--settings default,deeper] [--methods published,auto] [--skip-samson] [--skip-sweep]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from fluoscan.acquisition.importers import CubeLayout, import_cube
from fluoscan.tests.conftest import SHARED_DATA
from fluoscan.tests.unmixing.phantom_cases import (
    DIAGNOSTIC_SETTINGS,
    PHANTOM_SETTINGS,
    failed_criteria,
    scan_phantom,
    store_scores,
)
from fluoscan.unmixing import ConvergenceWarning, DataWarning, match_components, sweep_sparsity, unmix_store
from fluoscan.unmixing.metrics import compare_to_truth

# Methods as unmix_store arguments on top of the demo configuration (sparsity 0.9 for both markers).
METHODS: dict[str, dict[str, Any]] = {
    "published": {},
    "0.9+lstsq": {"abundance_start": "lstsq"},
    "auto+constant": {"sparsity": [None, "auto", "auto"]},
    "auto": {"sparsity": [None, "auto", "auto"], "abundance_start": "lstsq"},
    # The same fits, then the autofluorescence at the marker sites interpolated from the tissue around them.
    "published+sites": {"site_background": "interpolate"},
    "auto+sites": {"sparsity": [None, "auto", "auto"], "abundance_start": "lstsq", "site_background": "interpolate"},
}
SWEEP_TARGETS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99)
SAMSON = SHARED_DATA / "hyperspectral" / "Samson.mat"


def _rounded(values: np.ndarray, digits: int = 4) -> str:
    return " ".join(f"{value:.{digits}f}" for value in np.asarray(values, dtype=float))


def _unmix_quietly(path: Path, **kwargs: Any) -> float:
    """Unmix a store and return the wall time in s, silencing the expected iteration-cap and saturation warnings."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", DataWarning)
        unmix_store(path, **kwargs)
    return time.perf_counter() - started


def phantom_table(folder: Path, settings: list[str], methods: list[str]) -> None:
    starts = {}
    print("## Phantom: figures against the truth\n")
    print("| setting | method | SAD af, icg, af750 (rad) | r af, icg, af750 | af at sites | worst site pixel | sparsity icg, af750 | iterations | s | fails |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setting in settings:
        store = scan_phantom(folder / f"{setting}.zarr", setting)
        for method in methods:
            seconds = _unmix_quietly(store, **METHODS[method])
            scores = store_scores(store)
            group = zarr.open_group(str(store), mode="r")
            attrs = group["unmixing"].attrs
            if method == "published":
                starts[setting] = match_components(group["truth"]["spectra"][:], group["unmixing"]["spectra_init"][:]).angle
            failed = ", ".join(sorted(failed_criteria(scores))) or "none"
            print(
                f"| {setting} | {method} | {_rounded(scores.spectral_angle)} | {_rounded(scores.correlation)} "
                f"| {scores.background_error:+.2%} | {scores.background_worst:.1%} "
                f"| {_rounded(attrs['sparsity_achieved'][1:], 3)} | {attrs['n_iter']} | {seconds:.1f} | {failed} |",
                flush=True,
            )
    print()
    if starts:
        print("## Phantom: library spectra (the published start) against the truth\n")
        print("| setting | SAD af, icg, af750 (rad) |")
        print("|---|---|")
        for setting, angles in starts.items():
            print(f"| {setting} | {_rounded(angles)} |")
        print()


def samson_table(folder: Path) -> None:
    print("## Samson: mean SAD against the reference spectra\n")
    if not SAMSON.is_file():
        print(f"skipped: {SAMSON} is absent\n")
        return
    store = folder / "samson.zarr"
    layout = CubeLayout(axes=("wavelength", "pixel"), image_shape=(95, 95), order="F")
    import_cube(SAMSON, store, variable="Y", layout=layout, wavelengths_nm=(401, 889), truth_spectra_variable="GT",
                components=["soil", "tree", "water"])  # fmt: skip
    print("| abundance_start | SAD soil, tree, water (rad) | mean SAD (rad) | iterations | s |")
    print("|---|---|---|---|---|")
    for start in ("constant", "lstsq"):
        seconds = _unmix_quietly(store, abundance_start=start)
        group = zarr.open_group(str(store), mode="r")
        matching = match_components(group["truth"]["spectra"][:], group["unmixing"]["spectra"][:])
        attrs = group["unmixing"].attrs
        print(f"| {start} | {_rounded(matching.angle)} | {matching.mean_angle:.4f} | {attrs['n_iter']} | {seconds:.1f} |", flush=True)
    print()


def sweep_table(folder: Path) -> None:
    print("## Sparsity sweep on the default phantom\n")
    store = scan_phantom(folder / "sweep.zarr", "default")
    _unmix_quietly(store, sparsity=[None, "auto", "auto"], abundance_start="lstsq")
    chosen = zarr.open_group(str(store), mode="r")["unmixing"].attrs["auto_sparsity"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", DataWarning)
        sweep_sparsity(store, SWEEP_TARGETS, abundance_start="lstsq")

    group = zarr.open_group(str(store), mode="r")
    truth, sweep = group["truth"], group["unmixing"]["sweep"]
    print("| target | zeroed icg, af750 | spectrum distance icg, af750 (rad) | r icg, af750 | af at sites |")
    print("|---|---|---|---|---|")
    for index, target in enumerate(sweep["targets"][:]):
        # The sweep keeps the maps, in counts at the peak of spectra scaled to 1 like the truth's,
        # so the truth's spectra stand in for the fitted ones to score the maps.
        scores = compare_to_truth(truth["abundance"][:], truth["spectra"][:], sweep["abundance"][index], truth["spectra"][:])
        print(
            f"| {target:.2f} | {sweep['n_zeroed'][index, 1]} {sweep['n_zeroed'][index, 2]} "
            f"| {_rounded(sweep['spectra_distance'][index, 1:])} | {_rounded(scores.correlation[1:])} "
            f"| {scores.background_error:+.2%} |"
        )
    print()
    for name, record in zip(("icg_lnp", "af750"), chosen[1:]):
        print(
            f"auto chose sparsity {record['sparsity']:.3f} for {name}: {record['n_kept']} pixels above "
            f"{record['threshold']:.4g} counts (background {record['background_median']:.4g} ± {record['background_sd']:.4g})"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    all_settings = {**PHANTOM_SETTINGS, **DIAGNOSTIC_SETTINGS}
    parser.add_argument("--settings", default=",".join(all_settings), help="Comma-separated phantom settings.")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated unmixing methods.")
    parser.add_argument("--skip-samson", action="store_true", help="Leave out the Samson table.")
    parser.add_argument("--skip-sweep", action="store_true", help="Leave out the sparsity sweep.")
    arguments = parser.parse_args()
    settings = [name.strip() for name in arguments.settings.split(",") if name.strip()]
    methods = [name.strip() for name in arguments.methods.split(",") if name.strip()]
    unknown = sorted(set(settings) - set(all_settings)) + sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown settings or methods {unknown}; settings: {list(all_settings)}, methods: {list(METHODS)}")
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as folder:
        if settings and methods:
            phantom_table(Path(folder), settings, methods)
        if not arguments.skip_samson:
            samson_table(Path(folder))
        if not arguments.skip_sweep:
            sweep_table(Path(folder))


if __name__ == "__main__":
    main()
