"""Unmix a finished scan store and write the result into its ``unmixing/`` group.

Written arrays (float32 unless noted), each with ``dimension_names``:

    unmixing/abundance     (y, x, component)      weights A, NaN on lines that were never acquired
    unmixing/spectra       (component, wavelength) fitted spectra S, free ones scaled to a peak of 1
    unmixing/spectra_init  (component, wavelength) initial spectra
    unmixing/residual      (y, x)                  ‖m − a S‖ per pixel, in counts
    unmixing/loss          (iteration,)            float64, the loss every ``loss_every`` iterations

Group attributes: ``components``, ``sparsity_target``, ``sparsity_achieved``, ``n_iter``,
``converged`` and the parameters used (see :func:`unmix_store`).

:func:`sweep_sparsity` adds ``unmixing/sweep/``: one fit per sparsity target, with the entries
zeroed and the distance of each fitted spectrum from its initialisation.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

import fluoscan
from fluoscan.acquisition.config import ComponentConfig, ConfigError, UnmixingConfig, format_validation_error
from fluoscan.acquisition.store import ScanStatus, ScanStore, StoreError, utc_now
from fluoscan.unmixing.init import initial_spectra, mean_spectrum
from fluoscan.unmixing.library import LIBRARY_NAMES
from fluoscan.unmixing.metrics import residual_map, spectral_angle
from fluoscan.unmixing.nmf import DataWarning, SparseNMF
from fluoscan.unmixing.site_background import RING_MM, SITE_FRACTION, SiteBackground, SiteRefinement, refine_site_background
from fluoscan.unmixing.sparsity import AUTO_THRESHOLD_SIGMAS, hoyer_sparsity

log = logging.getLogger(__name__)

GROUP = "unmixing"
# Lines read at a time when the saturation mask is built from the raw counts.
_MASK_BLOCK_LINES = 64


def unmix_store(
    path: str | Path,
    *,
    components: Sequence[ComponentConfig] | Sequence[str] | None = None,
    sparsity: float | str | Sequence[float | str | None] | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    loss: str | None = None,
    overwrite: bool = True,
    force: bool = False,
    saturation_counts: int | None = None,
    abundance_start: str | None = None,
    n_jobs: int | None = None,
    backend: str = "numpy",
    scheduler: str | None = None,
    site_background: str | SiteBackground | None = None,
) -> Path:
    """Unmix the cube of a scan store with sparse NMF and write ``unmixing/`` into the store.

    Parameters
    ----------
    path : path
        The scan store (a Zarr v3 folder).
    components : sequence of ComponentConfig or of names, optional
        The sources to unmix. Default: the ``unmixing`` section of the store's ``config`` attribute
        (or fluoscan's default three components when the store has none). A bare name takes its
        settings from the store's configuration when listed there, else its library spectrum when
        it is a library name (``af750``, ``icg_lnp``, ``autofluorescence``), else a pixel spectrum
        picked from the data (``"auto"``).
    sparsity : float, "auto", None or sequence of these, optional
        Sparsity targets that replace the components' own: one per component, or one for all.
    max_iter, tol, loss : optional
        Replace the configuration's values.
    overwrite : bool, default=True
        Replace an existing ``unmixing/`` group; False raises instead.
    force : bool, default=False
        Unmix a store whose status is not "complete"; only acquired lines enter the fit.
    saturation_counts : int, optional
        Raw count at which the camera saturates. Default: the largest value of an integer ``raw``
        dtype (65535 for uint16); no saturation for float data.
    abundance_start : {"constant", "lstsq"}, optional
        Initial weights (see :class:`~fluoscan.unmixing.SparseNMF`): one positive constant, as in the
        published method, or the least-squares weights for the initial spectra. Replaces the
        configuration's ``abundance_start`` (default "constant").
    n_jobs : int or None, default=None
        Threads for the passes over the cube (see :class:`~fluoscan.unmixing.SparseNMF`); None uses every core.
    backend : {"numpy", "dask"}, default="numpy"
        "numpy" reads the whole cube into memory. "dask" reads it in blocks of lines on Dask workers,
        for cubes larger than memory (:mod:`fluoscan.unmixing.dask_backend`; Frobenius loss only).
    scheduler : str, optional
        With ``backend="dask"``: address of a Dask scheduler; None starts a local cluster.
    site_background : {"fit", "interpolate"}, optional
        Default: the configuration's ``site_background`` ("fit" unless set). "fit" keeps the autofluorescence at the marker sites as the sparse NMF fitted it.
        "interpolate" then re-estimates it from the tissue around each site, and the marker
        spectra and site weights with it (:mod:`fluoscan.unmixing.site_background`). It needs
        the numpy backend and the Frobenius loss.

    Returns
    -------
    Path
        The store's path.

    Raises
    ------
    StoreError
        If the store is missing, not complete (without ``force``), or already unmixed (without ``overwrite``).
    ConfigError
        If the store's unmixing configuration is invalid.
    ValueError
        If the data or the settings cannot be fitted; the message gives the reason.
    """
    path = Path(path)
    # Leaving the block consolidates the store's metadata again, so that readers see unmixing/.
    with ScanStore.open(path, "r+") as store:
        status = store.status
        if status is not ScanStatus.COMPLETE and not force:
            raise StoreError(
                f"store {path} has status {status.value!r}, not 'complete'; finish it with --resume, "
                "or pass force=True to unmix the lines acquired so far"
            )
        if GROUP in store.group and not overwrite:
            raise StoreError(f"store {path} already has an {GROUP}/ group; pass overwrite=True to replace it")
        settings = _unmixing_settings(store, components, sparsity, max_iter, tol, loss, abundance_start)
        if site_background is None:
            site_background = settings.site_background.value
        site_background = _site_background_mode(site_background, backend, settings.loss)
        if backend == "dask":
            from fluoscan.unmixing.dask_backend import unmix_with_dask

            unmix_with_dask(store, settings, saturation_counts, scheduler=scheduler)
        elif backend == "numpy":
            _unmix(store, settings, saturation_counts, n_jobs=n_jobs, site_background=site_background)
        else:
            raise ValueError(f'backend must be "numpy" or "dask", got {backend!r}')
    return path


def sweep_sparsity(
    path: str | Path,
    targets: Sequence[float],
    *,
    swept: Sequence[str] | None = None,
    components: Sequence[ComponentConfig] | Sequence[str] | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    loss: str | None = None,
    force: bool = False,
    saturation_counts: int | None = None,
    abundance_start: str | None = None,
    n_jobs: int | None = None,
    keep_abundance: bool = True,
) -> Path:
    """Unmix a store once per sparsity target and write the trends into ``unmixing/sweep/``.

    Raising a marker's target zeroes more of its weight map and keeps its fitted spectrum closer to
    its initialisation. The sweep records both, so that a target can be chosen from the curves
    instead of by trial. The main result in ``unmixing/`` is left as it is.

    Written arrays: ``targets`` (target,), ``n_zeroed`` (target, component): entries set to 0 by the
    last threshold step, ``spectra_distance`` (target, component): spectral angle in radians between
    the fitted and the initial spectrum, and with ``keep_abundance`` ``abundance`` (target, y, x,
    component) float32.

    Parameters
    ----------
    path : path
        The scan store.
    targets : sequence of float
        Sparsity targets in [0, 1], applied in turn to every swept component.
    swept : sequence of str, optional
        Components whose target is swept. Default: those with a sparsity target in the configuration
        (the markers); the others keep their own setting.
    components, max_iter, tol, loss, force, saturation_counts, abundance_start, n_jobs
        As for :func:`unmix_store`.
    keep_abundance : bool, default=True
        Also store the abundance maps of every target.

    Returns
    -------
    Path
        The store's path.
    """
    path = Path(path)
    targets = [float(target) for target in targets]
    if not targets or not all(0.0 <= target <= 1.0 for target in targets):
        raise ValueError(f"sparsity sweep targets must be numbers in [0, 1], got {targets}")
    with ScanStore.open(path, "r+") as store:
        if store.status is not ScanStatus.COMPLETE and not force:
            raise StoreError(
                f"store {path} has status {store.status.value!r}, not 'complete'; pass force=True to sweep "
                "the lines acquired so far"
            )
        settings = _unmixing_settings(store, components, None, max_iter, tol, loss, abundance_start)
        names = [component.name for component in settings.components]
        if swept is None:
            swept = [component.name for component in settings.components if component.sparsity is not None]
        unknown = [name for name in swept if name not in names]
        if unknown or not swept:
            raise ValueError(f"components to sweep must be some of {names}, got {list(swept)}")

        problem = _read_problem(store, settings, saturation_counts)
        n_zeroed = np.zeros((len(targets), len(names)), dtype=np.int64)
        distance = np.zeros((len(targets), len(names)))
        abundance = []
        for index, target in enumerate(targets):
            sparsity = [target if c.name in swept else c.sparsity for c in settings.components]
            log.info("sparsity sweep of %s: target %g for %s", path, target, list(swept))
            model, A = _fit(problem, settings, sparsity, n_jobs=n_jobs)
            n_zeroed[index] = model.n_zeroed_
            distance[index] = spectral_angle(model.components_, problem.spectra_init)
            if keep_abundance:
                abundance.append(problem.to_map(A))
        _write_sweep(store, targets, names, list(swept), n_zeroed, distance, abundance, settings)
    return path


def _write_sweep(
    store: ScanStore,
    targets: list[float],
    names: list[str],
    swept: list[str],
    n_zeroed: np.ndarray,
    distance: np.ndarray,
    abundance: list[np.ndarray],
    settings: UnmixingConfig,
) -> None:
    sweep = store.group.require_group(GROUP).create_group("sweep", overwrite=True)
    arrays = {
        "targets": (np.asarray(targets), ["target"], {"long_name": "sparsity target"}),
        "n_zeroed": (n_zeroed, ["target", "component"], {"long_name": "entries set to 0 by the last threshold step"}),
        "spectra_distance": (
            distance,
            ["target", "component"],
            {"units": "rad", "long_name": "spectral angle between fitted and initial spectrum"},
        ),
    }
    if abundance:
        arrays["abundance"] = (
            np.stack(abundance),
            ["target", "y", "x", "component"],
            {"units": "counts", "long_name": "component weights A, in counts at the peak of each spectrum"},
        )
    for name, (values, dims, attrs) in arrays.items():
        array = sweep.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape, dimension_names=dims)
        array[...] = values
        array.attrs.update(attrs)
    sweep.attrs.update(
        {"components": names, "swept": swept, "abundance_start": settings.abundance_start.value, "created": utc_now()}
    )
    log.info("wrote %s/%s/sweep: %d targets for %s", store.path, GROUP, len(targets), swept)


@dataclass
class _Problem:
    """A store's cube prepared for fitting: the acquired pixels, their saturated entries and the initial spectra."""

    M: np.ndarray  # (acquired lines · points, wavelengths), counts minus dark
    done: np.ndarray  # (lines,) bool
    saturated: np.ndarray | None  # like M, bool
    spectra_init: np.ndarray  # (components, wavelengths)
    components: list[ComponentConfig]
    n_lines: int
    n_points: int

    @property
    def names(self) -> list[str]:
        return [component.name for component in self.components]

    def to_map(self, values: np.ndarray) -> np.ndarray:
        """Place per-pixel values (acquired pixels, ...) on the (y, x, ...) grid, NaN on lines never acquired."""
        grid = np.full((self.n_lines, self.n_points, *values.shape[1:]), np.nan, dtype=np.float32)
        grid[self.done] = values.reshape(-1, self.n_points, *values.shape[1:])
        return grid


def _read_problem(store: ScanStore, settings: UnmixingConfig, saturation_counts: int | None) -> _Problem:
    components = list(settings.components)
    n_lines, n_points, n_wavelengths = store.shape
    done = store.line_done()
    if not done.any():
        raise StoreError(f"store {store.path} has no acquired line to unmix")
    log.info(
        "unmixing %s: %d of %d lines, components %s", store.path, int(done.sum()), n_lines, [c.name for c in components]
    )

    cube = store.read_cube(subtract_dark=True, dtype=np.float32)
    cube = cube if done.all() else cube[done]
    M = cube.reshape(-1, n_wavelengths)
    saturated = _saturated_entries(store, done, saturation_counts)
    if saturated is not None:
        saturated = saturated.reshape(-1, n_wavelengths)
        if not saturated.any():
            saturated = None

    reference_mean = _reference_mean(store) if any(c.spectrum == "reference" for c in components) else None
    spectra_init = initial_spectra(
        [component.spectrum for component in components],
        M,
        store.wavelengths_nm(),
        reference_mean=reference_mean,
        base_dir=store.path.parent,
    )
    return _Problem(M, done, saturated, spectra_init, components, n_lines, n_points)


def _fit(problem: _Problem, settings: UnmixingConfig, sparsity: list[Any], *, n_jobs: int | None) -> tuple[SparseNMF, np.ndarray]:
    model = SparseNMF(
        len(problem.components),
        sparsity=sparsity,
        components=problem.names,
        loss=settings.loss,
        max_iter=settings.max_iter,
        tol=settings.tol,
        fixed_spectra=[component.fixed for component in problem.components],
        random_state=settings.random_state,
        abundance_start=settings.abundance_start.value,
        n_jobs=n_jobs,
    )
    with warnings.catch_warnings():
        # Read noise leaves some dark-subtracted counts below 0 in every scan. Their count is logged
        # and stored as n_clipped, so the warning would only repeat it.
        warnings.filterwarnings("ignore", message=r".*negative values", category=DataWarning)
        A = model.fit_transform(problem.M, problem.spectra_init, saturation=problem.saturated)
    return model, A


def _unmix(
    store: ScanStore,
    settings: UnmixingConfig,
    saturation_counts: int | None,
    *,
    n_jobs: int | None,
    site_background: SiteBackground = SiteBackground.FIT,
) -> None:
    problem = _read_problem(store, settings, saturation_counts)
    sparsity = [component.sparsity for component in problem.components]
    model, A = _fit(problem, settings, sparsity, n_jobs=n_jobs)
    evidence = auto_sparsity_evidence(model, A)
    fitted = _Fitted(A, model.components_, model.sparsity_, model.reconstruction_err_)
    if site_background is SiteBackground.INTERPOLATE:
        fitted = _refine_sites(store, problem, model, fitted)

    abundance = problem.to_map(fitted.A)
    residual = problem.to_map(residual_map(problem.M, fitted.A, fitted.S))
    _write_result(store, model, problem.components, settings, abundance, residual, evidence, fitted)
    store.write_group_coordinates(GROUP, problem.names)
    log.info(
        "wrote %s/%s: %d iterations, %s, sparsity reached %s",
        store.path, GROUP, model.n_iter_, "converged" if model.converged_ else "not converged",
        _json_floats(fitted.sparsity),
    )  # fmt: skip


@dataclass
class _Fitted:
    """The weights and spectra written to the store, and the figures that depend on them."""

    A: np.ndarray
    S: np.ndarray
    sparsity: np.ndarray
    reconstruction_err: float
    site_background: dict[str, Any] | None = None


def _site_background_mode(value: str | SiteBackground, backend: str, loss: str) -> SiteBackground:
    try:
        mode = SiteBackground(value)
    except ValueError:
        allowed = ", ".join(f'"{member.value}"' for member in SiteBackground)
        raise ValueError(f"site_background must be one of {allowed}, got {value!r}") from None
    if mode is SiteBackground.INTERPOLATE and backend != "numpy":
        raise ValueError(f'site_background="interpolate" needs backend="numpy", got backend={backend!r}')
    if mode is SiteBackground.INTERPOLATE and loss != "frobenius":
        # The step fits by least squares, so its weights and spectra would not minimise another loss.
        raise ValueError(f'site_background="interpolate" needs loss="frobenius", got loss={loss!r}')
    return mode


def _refine_sites(store: ScanStore, problem: _Problem, model: SparseNMF, fitted: _Fitted) -> _Fitted:
    """Interpolate the autofluorescence at the marker sites and return the weights and spectra it gives."""
    markers = [p for p, rule in enumerate(model.sparsity_target_) if rule is not None]
    y_mm = store.y_mm()[problem.done]
    x = store.x()
    if store.group["x"].attrs.get("units") != "mm":
        # NOTE: x is a pixel index here; pixels are taken as square, one line pitch wide.
        x = np.arange(x.size) * _line_pitch(y_mm)
    refinement: SiteRefinement = refine_site_background(
        problem.M,
        fitted.A,
        fitted.S,
        markers=markers,
        fixed=[component.fixed for component in problem.components],
        shape=(int(problem.done.sum()), problem.n_points),
        y_mm=y_mm,
        x_mm=x,
        saturated=problem.saturated,
    )
    A = refinement.abundance.astype(fitted.A.dtype)
    sparsity = np.array([hoyer_sparsity(A[:, p]) if p in markers else np.nan for p in range(A.shape[1])])
    residual = residual_map(problem.M, A, refinement.spectra)
    return _Fitted(
        A,
        refinement.spectra,
        sparsity,
        float(np.sqrt(np.sum(residual**2))),
        refinement.summary(SITE_FRACTION, RING_MM),
    )


def _line_pitch(y_mm: np.ndarray) -> float:
    steps = np.abs(np.diff(y_mm))
    steps = steps[np.isfinite(steps) & (steps > 0)]
    return float(np.median(steps)) if steps.size else 1.0


def auto_sparsity_evidence(model: SparseNMF, A: np.ndarray) -> list[dict[str, Any] | None]:
    """Describe, for each component with the "auto" rule, the background statistics its threshold came from.

    Values are in the units of ``A``, counts at the peak of each spectrum. The fit works on
    unscaled weights, so each value is multiplied by the column's maximum over the fitted
    (unsaturated) pixels and divided by the maximum that the rule saw.

    Returns
    -------
    list of dict or None
        Per component: None without the "auto" rule, else ``criterion``, ``sigmas``,
        ``background_median``, ``background_sd``, ``threshold``, ``n_kept`` (pixels above the
        threshold) and ``sparsity`` (the Hoyer sparsity that the cut gives, the chosen target).
        Both counts leave out saturated pixels, whose weights are estimated after the fit, so
        ``sparsity`` differs from ``sparsity_achieved`` when a scan has some.
    """
    fitted = ~model.saturated_pixels_
    evidence: list[dict[str, Any] | None] = []
    for p, (rule, cut) in enumerate(zip(model.sparsity_target_, model.thresholds_)):
        if rule != "auto" or cut is None or not cut.peak > 0:
            evidence.append(None)
            continue
        scale = float(A[fitted, p].max(initial=0.0)) / cut.peak
        record = {
            "criterion": f"keep weights above the median + {AUTO_THRESHOLD_SIGMAS:g} robust standard deviations",
            "sigmas": AUTO_THRESHOLD_SIGMAS,
            "background_median": cut.background_median * scale,
            "background_sd": cut.background_sd * scale,
            "threshold": cut.threshold * scale,
            "n_kept": int(cut.n_kept),
            "sparsity": None if not np.isfinite(cut.sparsity) else float(cut.sparsity),
        }
        log.info(
            "auto sparsity of %s: %d pixels above %.4g counts (background %.4g ± %.4g), sparsity %.3f",
            model.component_names_[p], record["n_kept"], record["threshold"], record["background_median"],
            record["background_sd"], cut.sparsity,
        )  # fmt: skip
        evidence.append(record)
    return evidence


def _unmixing_settings(
    store: ScanStore,
    components: Sequence[ComponentConfig] | Sequence[str] | None,
    sparsity: Any,
    max_iter: int | None,
    tol: float | None,
    loss: str | None,
    abundance_start: str | None = None,
) -> UnmixingConfig:
    """Merge the store's unmixing configuration with the caller's overrides, and validate the result."""
    stored = (store.attrs.get("config") or {}).get("unmixing") or {}
    try:
        base = UnmixingConfig.model_validate(stored)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"{store.path} (config attribute)")) from None

    chosen = list(base.components)
    if components is not None:
        by_name = {component.name: component for component in base.components}
        chosen = [item if isinstance(item, ComponentConfig) else _component_for_name(str(item), by_name) for item in components]
    if sparsity is not None:
        targets = list(sparsity) if isinstance(sparsity, Sequence) and not isinstance(sparsity, str) else [sparsity] * len(chosen)
        if len(targets) != len(chosen):
            raise ValueError(f"got {len(targets)} sparsity targets for {len(chosen)} components {[c.name for c in chosen]}")
        chosen = [component.model_copy(update={"sparsity": target}) for component, target in zip(chosen, targets)]

    merged = {**base.model_dump(), "components": [component.model_dump() for component in chosen]}
    for key, value in (("max_iter", max_iter), ("tol", tol), ("loss", loss), ("abundance_start", abundance_start)):
        if value is not None:
            merged[key] = value
    try:
        # Validate again, so that overrides meet the same checks as a configuration file.
        return UnmixingConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "unmix_store arguments")) from None


def _component_for_name(name: str, configured: dict[str, ComponentConfig]) -> ComponentConfig:
    if name in configured:
        return configured[name]
    spectrum = f"library:{name}" if name in LIBRARY_NAMES else "auto"
    return ComponentConfig(name=name, spectrum=spectrum)


def _saturated_entries(store: ScanStore, done: np.ndarray, saturation_counts: int | None) -> np.ndarray | None:
    """Return a boolean (lines done, x, wavelength) mask of saturated raw counts, or None if none can saturate."""
    raw = store.raw
    if saturation_counts is None:
        if not np.issubdtype(raw.dtype, np.integer):
            return None
        saturation_counts = int(np.iinfo(raw.dtype).max)
    mask = np.zeros(raw.shape, dtype=bool)
    for start in range(0, raw.shape[0], _MASK_BLOCK_LINES):
        lines = slice(start, start + _MASK_BLOCK_LINES)
        mask[lines] = np.asarray(raw[lines]) >= saturation_counts
    return mask[done]


def _reference_mean(store: ScanStore) -> np.ndarray:
    """Return the mean spectrum, minus dark, of the store's reference acquisition (the animal without markers).

    The reference is a ``reference`` group inside the store with its own ``raw`` (…, wavelength) and
    optional ``dark``, or another scan store named by the ``reference_store`` attribute (a path
    relative to this store's folder).
    """
    if "reference" in store.group:
        node = store.group["reference"]
        raw_node = node["raw"] if hasattr(node, "keys") and "raw" in node else node
        data = np.asarray(raw_node[:], dtype=np.float64)
        if hasattr(node, "keys") and "dark" in node:
            data = data - np.asarray(node["dark"][:], dtype=np.float64)
        source = f"{store.path}/reference"
    elif store.attrs.get("reference_store"):
        reference_path = store.path.parent / store.attrs["reference_store"]
        data = ScanStore.open(reference_path).read_cube(subtract_dark=True, dtype=np.float64)
        source = str(reference_path)
    else:
        raise ValueError(
            f'a component asks for the "reference" spectrum, but store {store.path} has no reference '
            "acquisition (a reference/ group or a reference_store attribute); choose another spectrum"
        )
    if data.shape[-1] != store.shape[2]:
        raise ValueError(f"reference acquisition {source} has {data.shape[-1]} wavelengths, the scan has {store.shape[2]}")
    log.info("reference spectrum: mean of %s", source)
    return mean_spectrum(np.clip(data.reshape(-1, data.shape[-1]), 0, None))


def _json_floats(values: np.ndarray) -> list[float | None]:
    """Return floats for JSON attributes, with None for NaN (JSON has no NaN)."""
    return [None if not np.isfinite(value) else float(value) for value in np.asarray(values, dtype=np.float64)]


def _write_result(
    store: ScanStore,
    model: SparseNMF,
    chosen: list[ComponentConfig],
    settings: UnmixingConfig,
    abundance: np.ndarray,
    residual: np.ndarray,
    auto_evidence: list[dict[str, Any] | None],
    fitted: _Fitted | None = None,
) -> None:
    if fitted is None:
        fitted = _Fitted(abundance, model.components_, model.sparsity_, model.reconstruction_err_)
    group = store.group.create_group(GROUP, overwrite=True)
    arrays = {
        "abundance": (
            abundance,
            ["y", "x", "component"],
            {"units": "counts", "long_name": "component weights A, in counts at the peak of each spectrum"},
        ),
        "spectra": (fitted.S.astype(np.float32), ["component", "wavelength"], {"long_name": "fitted spectra S"}),
        "spectra_init": (model.spectra_init_.astype(np.float32), ["component", "wavelength"], {"long_name": "initial spectra"}),
        "residual": (residual, ["y", "x"], {"units": "counts", "long_name": "residual norm per pixel, ||m - a S||"}),
        "loss": (
            model.loss_history_.astype(np.float64),
            ["iteration"],
            {"long_name": f"{settings.loss} loss", "every_iterations": int(model.loss_every_)},
        ),
    }
    for name, (values, dims, attrs) in arrays.items():
        array = group.create_array(
            name, shape=values.shape, dtype=values.dtype, chunks=values.shape, dimension_names=dims, fill_value=np.nan
        )
        array[...] = values
        array.attrs.update(attrs)

    group.attrs.update(
        {
            "components": [component.name for component in chosen],
            "sparsity_target": [component.sparsity for component in chosen],
            "sparsity_achieved": _json_floats(fitted.sparsity),
            "auto_sparsity": auto_evidence,
            "n_iter": int(model.n_iter_),
            "converged": bool(model.converged_),
            "loss": settings.loss,
            "max_iter": settings.max_iter,
            "tol": settings.tol,
            "random_state": settings.random_state,
            "abundance_start": model.abundance_start,
            "spectrum_init": [component.spectrum for component in chosen],
            "fixed": [component.fixed for component in chosen],
            "reconstruction_err": float(fitted.reconstruction_err),
            "site_background": fitted.site_background or {"method": SiteBackground.FIT.value},
            "n_zeroed": [int(count) for count in model.n_zeroed_],
            "beta": [None if cut is None or not np.isfinite(cut.beta) else float(cut.beta) for cut in model.thresholds_],
            "n_clipped": int(model.n_clipped_),
            "n_saturated_pixels": int(model.saturated_pixels_.sum()),
            "fluoscan_version": fluoscan.__version__,
            "created": utc_now(),
        }
    )
