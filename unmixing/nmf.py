"""Sparse non-negative matrix factorization M ≈ A S by multiplicative updates.

Shapes, used throughout: M (n_pixels, n_wavelengths) is the data, A (n_pixels, P) the weights
(abundance maps, one column per component) and S (P, n_wavelengths) the spectra.

Each iteration updates S, then A (Lee and Seung's rules):

    Frobenius ‖M − AS‖²:     S ← S ∘ (AᵀM) ⊘ (AᵀA S)          A ← A ∘ (M Sᵀ) ⊘ (A S Sᵀ)
    Kullback-Leibler D(M‖AS): S ← S ∘ (Aᵀ(M ⊘ AS)) ⊘ (Aᵀ1)     A ← A ∘ ((M ⊘ AS) Sᵀ) ⊘ (1 Sᵀ)

After each A update, every column with a sparsity target is hard-thresholded
(:mod:`fluoscan.unmixing.sparsity`). A multiplicative update never turns a zero back into a
non-zero value, so the updates act on an unthresholded working copy ``A_work`` and only the
thresholded copy ``A`` feeds the S update, the loss and the output. A pixel cut by an early,
wrong threshold stays alive in ``A_work`` and comes back once its weight rises above the cut.

The block kernels are in :mod:`fluoscan.unmixing.kernels`, the update loop in
:mod:`fluoscan.unmixing.loop` and the input checks in :mod:`fluoscan.unmixing.checks`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from fluoscan.unmixing import compiled
from fluoscan.unmixing.checks import (
    _SHOWN_PIXELS,
    DataWarning,
    _as_float_matrix,
    _check_abundance_init,
    _check_finite,
    _check_spectra_init,
    _data_moments,
    _prepare_data,
    _PreparedData,
)
from fluoscan.unmixing.init import endmember_spectra, mean_spectrum
from fluoscan.unmixing.kernels import EPSILON, Loss, _row_blocks
from fluoscan.unmixing.loop import _LoopResult, _LoopSettings, _run_updates
from fluoscan.unmixing.sparsity import hoyer_sparsity

log = logging.getLogger(__name__)

# Rows per block are chosen so that one block of M (512 KiB) stays in a core's cache between the two
# products that read it. Measured on 65,536 x 512 float32 with 2 cores: 256-row blocks ran 1.2 to
# 2 times faster than 1,024 or 4,096 rows, with one thread or one per core.
_BLOCK_BYTES = 512 * 1024


class ConvergenceWarning(UserWarning):
    """The fit reached ``max_iter`` before the loss settled to within ``tol``."""


__all__ = ["ConvergenceWarning", "DataWarning", "Loss", "SparseNMF"]


# ---------------------------------------------------------------------- the estimator

_INIT_METHODS = ("spa", "mean", "random")
_ABUNDANCE_STARTS = ("constant", "lstsq")
_DEVICES = ("cpu", "cuda")
# A least-squares start is clipped at this fraction of its maximum: a multiplicative update cannot
# move an entry that starts at 0.
_LSTSQ_FLOOR = 1e-6


class SparseNMF:
    """Non-negative matrix factorization M ≈ A S with per-component sparsity targets on A.

    Fits weights A (n_pixels, n_components) and spectra S (n_components, n_wavelengths) by
    multiplicative updates, S first, then A, each iteration. After each A update, every column with
    a sparsity target is hard-thresholded: entries below ``max / β`` are set to 0, with β chosen
    exactly so that the column's Hoyer sparsity is as close as possible to its target.

    Parameters
    ----------
    n_components : int or None, default=None
        Number of components P. None takes it from ``components``, ``sparsity``, ``fixed_spectra``
        or the ``spectra_init`` given to :meth:`fit`.
    sparsity : float, "auto", None or sequence of these, default=None
        Hoyer sparsity target in [0, 1] of each component's weight column; None for no constraint;
        ``"auto"`` thresholds at the column's noise floor (median + 3 robust standard deviations).
        A single value applies to every component.
    components : sequence of str, optional
        Component names, e.g. ``["autofluorescence", "icg_lnp", "af750"]``.
        Default ``component_0``, ``component_1``, ...
    loss : {"frobenius", "kullback-leibler"}, default="frobenius"
        Objective: ‖M − AS‖²_F or the generalised Kullback-Leibler divergence D(M‖AS).
    max_iter : int, default=500
        Maximum number of iterations.
    tol : float, default=1e-5
        The fit stops when the loss changes, on average per iteration since its previous
        evaluation, by less than ``tol`` times its previous value. The change is taken in absolute
        value because a threshold step can raise the loss. 0 runs ``max_iter`` iterations.
    fixed_spectra : sequence of bool, or of component names or indices, optional
        Components whose spectra stay at their initial value (known dye spectra).
    init : {"spa", "mean", "random"}, default="spa"
        Initial spectra when :meth:`fit` gets no ``spectra_init``. "spa": the data's purest pixels,
        picked by the successive projection algorithm (deterministic). "mean": the data's mean
        spectrum, usable for one component or for components with different sparsity targets.
        "random": the mean spectrum times uniform random factors in [0.5, 1.5) from ``random_state``.
    abundance_start : {"constant", "lstsq"}, default="constant"
        Initial weights when :meth:`fit` gets no ``abundance_init``. "constant": one positive
        constant, the least-squares scale of the initial spectra's sum to the data (the published
        method). "lstsq": the least-squares weights for the initial spectra, clipped at 1e-6 of
        their maximum. The first S update from constant weights pulls every spectrum towards the
        data's mean shape, so "lstsq" keeps good data-derived spectra (``init="spa"``) where they are.
    random_state : int, numpy.random.Generator or None, default=None
        Seed of the "random" initialisation. Every other step is deterministic.
    loss_every : int or None, default=None
        Iterations between loss evaluations. None: 1 for the Frobenius loss on float64 data, which
        comes from Gram matrices at no cost, else 10. On float32 data the Gram matrices lose too
        much precision, so the Frobenius loss is computed from the residual, one pass over M; the
        Kullback-Leibler loss costs a logarithm per entry.
    block_rows : int or None, default=None
        Rows of M per block in the update loop; None sizes a block to 512 KiB.
    n_jobs : int or None, default=None
        Threads that run the passes over M, each on its own stripe of rows with single-threaded
        kernels. None or -1: one per CPU core. 1: the calling thread alone; without numba, the BLAS
        kernels then use BLAS's own threads. The stripes' sums are added in a fixed order, so a fit
        repeats exactly with the same number of threads; another number changes the rounding.
    device : {"cpu", "cuda"}, default="cpu"
        Where the passes over M run. "cuda" copies M to an NVIDIA GPU with CuPy (Frobenius loss
        only); the sparsity step stays on the CPU. NOTE: the "cuda" path has not run on a GPU yet.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_wavelengths)
        Fitted spectra S. Free spectra are scaled to a peak of 1 and A carries their intensity;
        fixed spectra keep the scale they were given.
    n_components_ : int
    component_names_ : list of str
    spectra_init_ : ndarray of shape (n_components, n_wavelengths)
        Initial spectra, in the data's dtype.
    n_iter_ : int
        Iterations run.
    converged_ : bool
        Whether the loss settled to within ``tol`` before ``max_iter``.
    loss_history_ : ndarray
        Loss before the first iteration and after every ``loss_every`` iterations (and after the last).
        Frobenius: ‖M − AS‖²_F; Kullback-Leibler: D(M‖AS). Saturated pixels are not included.
    loss_every_ : int
        Iterations between two entries of ``loss_history_``.
    reconstruction_err_ : float
        ‖M − AS‖_F for the Frobenius loss, D(M‖AS) for Kullback-Leibler, over the fitted pixels.
    sparsity_target_ : list of float, "auto" or None
    sparsity_ : ndarray of shape (n_components,)
        Hoyer sparsity reached by each weight column; NaN for components without a target.
    n_zeroed_ : ndarray of shape (n_components,)
        Entries set to 0 by the last threshold step in each column.
    thresholds_ : list of Threshold or None
        Last cut of each column (threshold value, β, entries kept).
    fixed_ : ndarray of shape (n_components,), bool
    n_clipped_ : int
        Negative data values clipped to 0.
    saturated_pixels_ : ndarray of shape (n_pixels,), bool
        Pixels left out of the fit because they are saturated.
    n_features_in_ : int
        Number of wavelengths seen in fit.
    seconds_per_iter_ : float
        Wall time per iteration of the update loop.
    threshold_seconds_per_iter_ : float
        Wall time per iteration of the search for the sparsity thresholds, part of ``seconds_per_iter_``.
    """

    def __init__(
        self,
        n_components: int | None = None,
        *,
        sparsity: float | str | Sequence[float | str | None] | None = None,
        components: Sequence[str] | None = None,
        loss: str = "frobenius",
        max_iter: int = 500,
        tol: float = 1e-5,
        fixed_spectra: Sequence[bool] | Sequence[str | int] | None = None,
        init: str = "spa",
        abundance_start: str = "constant",
        random_state: int | np.random.Generator | None = None,
        loss_every: int | None = None,
        block_rows: int | None = None,
        n_jobs: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.n_components = n_components
        self.sparsity = sparsity
        self.components = components
        self.loss = loss
        self.max_iter = max_iter
        self.tol = tol
        self.fixed_spectra = fixed_spectra
        self.init = init
        self.abundance_start = abundance_start
        self.random_state = random_state
        self.loss_every = loss_every
        self.block_rows = block_rows
        self.n_jobs = n_jobs
        self.device = device

    def get_params(self) -> dict[str, Any]:
        """Return the constructor parameters."""
        names = ("n_components", "sparsity", "components", "loss", "max_iter", "tol", "fixed_spectra", "init",
                 "abundance_start", "random_state", "loss_every", "block_rows", "n_jobs", "device")  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        changed = {key: value for key, value in self.get_params().items() if value != _DEFAULTS[key]}
        return f"SparseNMF({', '.join(f'{key}={value!r}' for key, value in changed.items())})"

    # ------------------------------------------------------------------ parameters

    def _n_components(self, spectra_init: Any) -> int:
        counts: dict[str, int] = {}
        if self.n_components is not None:
            if isinstance(self.n_components, bool) or not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
                raise ValueError(f"n_components must be a positive integer or None, got {self.n_components!r}")
            counts["n_components"] = int(self.n_components)
        if self.components is not None:
            counts["components"] = len(self.components)
        if _is_sequence(self.sparsity):
            counts["sparsity"] = len(self.sparsity)
        if self.fixed_spectra is not None and all(isinstance(flag, (bool, np.bool_)) for flag in self.fixed_spectra):
            counts["fixed_spectra"] = len(self.fixed_spectra)
        if spectra_init is not None:
            counts["spectra_init"] = int(np.shape(spectra_init)[0])
        if not counts:
            raise ValueError("the number of components is unknown: give n_components, components or spectra_init")
        if len(set(counts.values())) > 1:
            sources = ", ".join(f"{key} gives {count}" for key, count in counts.items())
            raise ValueError(f"inconsistent number of components: {sources}")
        return next(iter(counts.values()))

    def _validate(self, spectra_init: Any) -> tuple[int, list[str], list[Any], np.ndarray, Loss]:
        n_components = self._n_components(spectra_init)
        names = [f"component_{p}" for p in range(n_components)] if self.components is None else [str(c) for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique, got {names}")

        rules = list(self.sparsity) if _is_sequence(self.sparsity) else [self.sparsity] * n_components
        for p, rule in enumerate(rules):
            if rule is None or rule == "auto":
                continue
            if isinstance(rule, (bool, str)) or not isinstance(rule, (int, float, np.floating, np.integer)) or not 0 <= rule <= 1:
                raise ValueError(f'sparsity of {names[p]!r} must be a number in [0, 1], "auto" or None, got {rule!r}')
            rules[p] = float(rule)

        fixed = np.zeros(n_components, dtype=bool)
        for item in self.fixed_spectra or ():
            if isinstance(item, (bool, np.bool_)):
                fixed = np.asarray(self.fixed_spectra, dtype=bool)
                break
            if isinstance(item, str) and item in names:
                fixed[names.index(item)] = True
            elif isinstance(item, (int, np.integer)) and 0 <= item < n_components:
                fixed[int(item)] = True
            else:
                raise ValueError(f"fixed_spectra names unknown component {item!r}; components are {names}")

        try:
            loss = Loss(self.loss)
        except ValueError:
            allowed = ", ".join(repr(item.value) for item in Loss)
            raise ValueError(f"loss must be one of {allowed}, got {self.loss!r}") from None
        for name, value, low in (("max_iter", self.max_iter, 1), ("loss_every", self.loss_every, 1), ("block_rows", self.block_rows, 1)):
            if value is None and name != "max_iter":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.n_jobs is not None and (
            isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, (int, np.integer)) or not (self.n_jobs >= 1 or self.n_jobs == -1)
        ):
            raise ValueError(f"n_jobs must be a positive integer, -1 (one per core) or None, got {self.n_jobs!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float, np.floating)) or not self.tol >= 0:
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")
        if self.init not in _INIT_METHODS:
            raise ValueError(f"init must be one of {', '.join(map(repr, _INIT_METHODS))}, got {self.init!r}")
        if self.abundance_start not in _ABUNDANCE_STARTS:
            raise ValueError(
                f"abundance_start must be one of {', '.join(map(repr, _ABUNDANCE_STARTS))}, got {self.abundance_start!r}"
            )
        if self.device not in _DEVICES:
            raise ValueError(f"device must be one of {', '.join(map(repr, _DEVICES))}, got {self.device!r}")
        if self.device != "cpu" and loss is not Loss.FROBENIUS:
            raise ValueError(f"device={self.device!r} fits the Frobenius loss only; use device='cpu' for {loss.value!r}")
        return n_components, names, rules, fixed, loss

    def _n_threads(self) -> int:
        if self.n_jobs is None or self.n_jobs == -1:
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return int(self.n_jobs)

    def _block_rows(self, n_wavelengths: int, itemsize: int) -> int:
        if self.block_rows:
            return int(self.block_rows)
        return max(64, _BLOCK_BYTES // (n_wavelengths * itemsize))

    # ------------------------------------------------------------------ fitting

    def fit(
        self, M: Any, spectra_init: Any = None, *, abundance_init: Any = None, saturation: Any = None
    ) -> SparseNMF:
        """Fit A and S to the data.

        Parameters
        ----------
        M : array_like of shape (n_pixels, n_wavelengths)
            Non-negative data, e.g. a cube minus its dark frame reshaped to (Ny·Nx, Nλ). float32 and
            float64 are kept as given; other dtypes become float64. Negative values are clipped to 0
            with a :class:`DataWarning`.
        spectra_init : array_like of shape (n_components, n_wavelengths), optional
            Initial spectra S. Default: from ``init``.
        abundance_init : array_like of shape (n_pixels, n_components), optional
            Initial weights A. Default: one positive constant, the least-squares scale of the
            initial spectra's sum to the data.
        saturation : float or bool array, optional
            A value at or above which an entry is saturated, or a mask of saturated pixels
            (n_pixels,) or entries (n_pixels, n_wavelengths). Saturated pixels are left out of the
            fit; their weights are estimated afterwards with S fixed, from their unsaturated entries.

        Returns
        -------
        self
        """
        self._fit(M, spectra_init, abundance_init, saturation)
        return self

    def fit_transform(
        self, M: Any, spectra_init: Any = None, *, abundance_init: Any = None, saturation: Any = None
    ) -> np.ndarray:
        """Fit the model and return the weights A, of shape (n_pixels, n_components).

        The arguments are those of :meth:`fit`.
        """
        return self._fit(M, spectra_init, abundance_init, saturation)

    def transform(self, M: Any) -> np.ndarray:
        """Compute the weights A for new data with the fitted spectra held fixed.

        The same sparsity rules, ``max_iter`` and ``tol`` apply as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_pixels, n_components)
        """
        if not hasattr(self, "components_"):
            raise RuntimeError("this SparseNMF is not fitted yet; call fit or fit_transform first")
        M = _as_float_matrix(M)
        if M.shape[1] != self.n_features_in_:
            raise ValueError(f"M has {M.shape[1]} wavelengths, the model was fitted on {self.n_features_in_}")
        _check_finite(M)
        prepared = _prepare_data(M, None)
        _, _, rules, _, loss = self._validate(self.components_)
        S = self.components_.astype(M.dtype)
        settings = self._settings(prepared.M, loss, rules, None, update_spectra=False)
        A_work = _constant_abundance(prepared.M, S, settings)
        result = _run_updates(prepared.M, A_work, S, settings)
        self._warn_if_not_converged(result, stacklevel=3)
        return result.A

    def _settings(
        self, M: np.ndarray, loss: Loss, rules: list[Any], free: np.ndarray | None, update_spectra: bool
    ) -> _LoopSettings:
        block_rows = self._block_rows(M.shape[1], M.dtype.itemsize)
        # The loss from Gram matrices costs nothing but is exact enough only in float64; the other
        # losses cost a pass over M, so they are evaluated every 10 iterations by default.
        gram_loss = loss is Loss.FROBENIUS and M.dtype == np.float64
        loss_every = self.loss_every or (1 if gram_loss else 10)
        norm_sq, column_sums = _data_moments(M, _row_blocks(M.shape[0], block_rows))
        settings = _LoopSettings(
            loss=loss,
            rules=rules,
            free=free,
            update_spectra=update_spectra,
            max_iter=int(self.max_iter),
            tol=float(self.tol),
            loss_every=loss_every,
            block_rows=block_rows,
            n_threads=self._n_threads(),
            gram_loss=gram_loss,
            norm_sq=norm_sq,
            column_sums=column_sums,
            compiled=compiled.AVAILABLE and loss is Loss.FROBENIUS,
            device=self.device,
        )
        return settings

    def _fit(self, M: Any, spectra_init: Any, abundance_init: Any, saturation: Any) -> np.ndarray:
        M = _as_float_matrix(M)
        n_components, names, rules, fixed, loss = self._validate(spectra_init)
        _check_finite(M)
        n_pixels, n_wavelengths = M.shape
        if n_pixels < 2 or n_wavelengths < 1:
            raise ValueError(f"M needs at least 2 pixels and 1 wavelength, got shape {M.shape}")
        if n_components > min(n_pixels, n_wavelengths):
            raise ValueError(
                f"n_components={n_components} exceeds what data of shape {M.shape} support "
                f"(at most min(n_pixels, n_wavelengths) = {min(n_pixels, n_wavelengths)})"
            )
        prepared = _prepare_data(M, saturation)
        data = prepared.M
        if not np.any(data):
            raise ValueError("the data are zero everywhere (after clipping negative values); there is nothing to unmix")

        S = self._initial_spectra(data, spectra_init, n_components, names, rules, fixed).astype(M.dtype)
        free = None if not fixed.any() else ~fixed
        settings = self._settings(data, loss, rules, free, update_spectra=True)
        if abundance_init is None and self.abundance_start == "lstsq":
            A_work = _least_squares_abundance(data, S, settings)
        elif abundance_init is None:
            A_work = _constant_abundance(data, S, settings)
        else:
            A_work = _check_abundance_init(abundance_init, n_pixels, n_components, M.dtype)
            A_work = A_work if prepared.fit_rows is None else A_work[prepared.fit_rows]

        log.info(
            "fitting %d components %s to %d pixels x %d wavelengths (%s, %s loss, sparsity %s, fixed %s)",
            n_components, names, data.shape[0], n_wavelengths, M.dtype, loss.value, rules, fixed.tolist(),
        )  # fmt: skip
        self.spectra_init_ = S.copy()
        result = _run_updates(data, A_work, S, settings)
        return self._finish(result, prepared, S, settings, n_pixels, stacklevel=5)

    def _finish(
        self, result: _LoopResult, prepared: _PreparedData, S: np.ndarray, settings: _LoopSettings, n_pixels: int, stacklevel: int
    ) -> np.ndarray:
        """Place the fitted weights, scale free spectra to a peak of 1 and set the fitted attributes; return A."""
        n_components, names, rules, fixed, loss = self._validate(S)
        n_wavelengths = S.shape[1]
        A = self._assemble_abundance(result, prepared, S, loss, n_pixels)

        # Free spectra are reported with a peak of 1; the weights carry the intensity.
        peaks = S.max(axis=1)
        scale = np.where(fixed | (peaks <= 0), 1.0, peaks).astype(S.dtype)
        S /= scale[:, None]
        A *= scale[None, :]

        self.components_ = S
        self.n_components_ = n_components
        self.component_names_ = names
        self.fixed_ = fixed
        self.sparsity_target_ = rules
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.loss_history_ = np.asarray(result.loss_history)
        self.loss_every_ = settings.loss_every
        final = result.loss_history[-1]
        self.reconstruction_err_ = float(np.sqrt(final)) if loss is Loss.FROBENIUS else float(final)
        self.thresholds_ = result.cuts
        self.n_zeroed_ = result.n_zeroed
        self.sparsity_ = np.array(
            [hoyer_sparsity(A[:, p]) if rules[p] is not None else np.nan for p in range(n_components)]
        )
        self.n_clipped_ = prepared.n_clipped
        self.saturated_pixels_ = np.zeros(n_pixels, dtype=bool)
        self.saturated_pixels_[prepared.masked_rows] = True
        self.n_features_in_ = n_wavelengths
        self.seconds_per_iter_ = result.seconds / max(result.iterations_timed, 1)
        self.threshold_seconds_per_iter_ = result.threshold_seconds / max(result.iterations_timed, 1)

        log.info(
            "stopped after %d iterations (%s), loss %.6g, %.3g s per iteration, sparsity reached %s",
            result.n_iter, "converged" if result.converged else "max_iter reached", final,
            self.seconds_per_iter_, np.round(self.sparsity_, 3).tolist(),
        )  # fmt: skip
        self._warn_if_not_converged(result, stacklevel=stacklevel)
        dead = [names[p] for p in range(n_components) if not A[:, p].any() or not S[p].any()]
        if dead:
            message = f"components {dead} ended at zero everywhere; the data may support fewer components"
            warnings.warn(message, DataWarning, stacklevel=stacklevel)
        return A

    def _initial_spectra(
        self, data: np.ndarray, spectra_init: Any, n_components: int, names: list[str], rules: list[Any], fixed: np.ndarray
    ) -> np.ndarray:
        if spectra_init is None:
            if self.init == "spa":
                spectra_init = endmember_spectra(data, n_components)
            else:
                mean = mean_spectrum(data)
                spectra_init = np.tile(mean / mean.max(), (n_components, 1))
                if self.init == "random":
                    spectra_init *= np.random.default_rng(self.random_state).uniform(0.5, 1.5, spectra_init.shape)
        return _check_spectra_init(spectra_init, n_components, data.shape[1], rules, fixed, names)

    def _assemble_abundance(
        self, result: _LoopResult, prepared: _PreparedData, S: np.ndarray, loss: Loss, n_pixels: int
    ) -> np.ndarray:
        """Place the fitted rows and the estimated saturated rows in one (n_pixels, P) array."""
        if prepared.fit_rows is None:
            return result.A
        A = np.empty((n_pixels, S.shape[0]), dtype=result.A.dtype)
        A[prepared.fit_rows] = result.A
        estimate = _masked_abundance(prepared.masked_data, prepared.masked_weights, S, loss, int(self.max_iter), float(self.tol))
        for p, cut in enumerate(result.cuts):
            if cut is not None and cut.threshold > 0:
                column = estimate[:, p]
                result.n_zeroed[p] += int(np.count_nonzero(column[column < cut.threshold]))
                column[column < cut.threshold] = 0
        A[prepared.masked_rows] = estimate
        return A

    def _warn_if_not_converged(self, result: _LoopResult, stacklevel: int) -> None:
        if result.converged or self.tol == 0:
            return
        message = (
            f"SparseNMF reached max_iter={self.max_iter} before the relative loss change fell below "
            f"tol={self.tol}; raise max_iter or tol"
        )
        warnings.warn(message, ConvergenceWarning, stacklevel=stacklevel)


_DEFAULTS = SparseNMF().get_params()


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str)


def _constant_abundance(M: np.ndarray, S: np.ndarray, settings: _LoopSettings) -> np.ndarray:
    """Start A at the constant c that best fits M ≈ c 1 (Σ_p S_p)ᵀ, and give the loop its first AᵀM, AᵀA."""
    spectrum_sum = S.sum(axis=0, dtype=np.float64)
    column_sums = settings.column_sums
    n_pixels, n_components = M.shape[0], S.shape[0]
    c = float(column_sums @ spectrum_sum) / (n_pixels * float(spectrum_sum @ spectrum_sum))
    if not c > 0:
        raise ValueError("the initial spectra do not overlap the data; no positive constant start exists")
    settings.initial_statistics = (
        np.tile(c * column_sums, (n_components, 1)),
        np.full((n_components, n_components), c * c * n_pixels),
    )
    return np.full((n_pixels, n_components), c, dtype=M.dtype)


def _least_squares_abundance(M: np.ndarray, S: np.ndarray, settings: _LoopSettings) -> np.ndarray:
    """Start A at the least-squares weights M Sᵀ (S Sᵀ)⁺ for the initial spectra, clipped at a small positive floor."""
    S64 = S.astype(np.float64)
    projector = (np.linalg.pinv(S64 @ S64.T)).astype(M.dtype)
    A = np.empty((M.shape[0], S.shape[0]), dtype=M.dtype)
    for rows in _row_blocks(M.shape[0], settings.block_rows):
        np.matmul(M[rows] @ S.T, projector, out=A[rows])
    peak = float(A.max())
    if not peak > 0:
        raise ValueError("the initial spectra do not overlap the data; no positive least-squares start exists")
    np.maximum(A, _LSTSQ_FLOOR * peak, out=A)
    return A


def _masked_abundance(
    M: np.ndarray, weights: np.ndarray | None, S: np.ndarray, loss: Loss, max_iter: int, tol: float
) -> np.ndarray:
    """Estimate the weights of left-out pixels with S fixed, from their entries of weight 1 only.

    Pixels with fewer usable entries than components are estimated from all of their entries.
    """
    n_pixels, n_components = M.shape[0], S.shape[0]
    if weights is None:
        weights = np.ones_like(M)
    too_few = np.count_nonzero(weights, axis=1) < n_components
    if too_few.any():
        first_rows = np.flatnonzero(too_few)[:_SHOWN_PIXELS].tolist()
        log.warning(
            "%d saturated pixels have fewer unsaturated wavelengths than components (rows %s...); "
            "their weights use the saturated values and are lower bounds",
            int(too_few.sum()), first_rows,
        )  # fmt: skip
        weights[too_few] = 1
    weighted = weights * M
    spectrum_sum = S.sum(axis=0)
    A = np.maximum((weighted @ spectrum_sum) / np.maximum((weights * spectrum_sum) @ spectrum_sum, EPSILON), EPSILON)
    A = np.repeat(A[:, None], n_components, axis=1).astype(M.dtype)
    for _ in range(max_iter):
        product = np.maximum(A @ S, EPSILON)
        if loss is Loss.FROBENIUS:
            numerator, denominator = weighted @ S.T, (weights * product) @ S.T
        else:
            numerator, denominator = (weighted / product) @ S.T, weights @ S.T
        denominator[denominator == 0] = EPSILON
        updated = A * numerator / denominator
        change = float(np.max(np.abs(updated - A))) / max(float(np.max(A)), EPSILON)
        A = updated
        if change < tol:
            break
    return A
