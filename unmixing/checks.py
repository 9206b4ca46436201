"""Input checks of SparseNMF: shapes, dtypes, finite values, saturation masks and initial values."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Most pixel indices that one error or log message lists.
_SHOWN_PIXELS = 5


class DataWarning(UserWarning):
    """Input values were clipped or pixels were excluded from the fit."""



@dataclass
class _PreparedData:
    """The rows that enter the fit and what was done to the input to get them."""

    M: np.ndarray
    fit_rows: np.ndarray | None
    masked_rows: np.ndarray
    masked_data: np.ndarray
    masked_weights: np.ndarray | None
    n_clipped: int


def _as_float_matrix(M: Any, name: str = "M") -> np.ndarray:
    M = np.asarray(M)
    if M.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (n_pixels, n_wavelengths), got shape {M.shape}; "
            "reshape a cube with cube.reshape(-1, n_wavelengths)"
        )
    if M.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(M.dtype, np.number) or M.dtype == np.bool_):
            raise ValueError(f"{name} must hold numbers, got dtype {M.dtype}")
        M = M.astype(np.float64)
    # Row blocks of a C-ordered array are contiguous, which the BLAS calls of the loop need to run fast.
    return np.ascontiguousarray(M)


def _check_finite(M: np.ndarray, name: str = "M") -> None:
    # A float64 sum is finite exactly when every entry is, barring overflow beyond 1e308.
    if np.isfinite(np.sum(M, dtype=np.float64)):
        return
    bad = ~np.isfinite(M)
    pixels = np.flatnonzero(bad.any(axis=1))
    if pixels.size == 0:
        return
    first_pixels = ", ".join(str(p) for p in pixels[:_SHOWN_PIXELS])
    more = ", ..." if pixels.size > _SHOWN_PIXELS else ""
    raise ValueError(
        f"{name} contains {int(bad.sum())} NaN or infinite values in {pixels.size} pixels "
        f"(pixel indices {first_pixels}{more}); remove or repair those pixels before unmixing"
    )


def _saturation_masks(M: np.ndarray, saturation: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Return (pixel mask, entry mask) for the ``saturation`` argument of fit."""
    if saturation is None:
        return None, None
    if np.isscalar(saturation):
        if isinstance(saturation, bool) or not np.isfinite(saturation):
            raise ValueError(f"saturation must be a finite number or a boolean mask, got {saturation!r}")
        entries = M >= saturation
        return entries.any(axis=1), entries
    mask = np.asarray(saturation)
    if mask.dtype != np.bool_:
        raise ValueError(f"a saturation mask must be boolean, got dtype {mask.dtype}")
    if mask.shape == (M.shape[0],):
        return mask, None
    if mask.shape == M.shape:
        return mask.any(axis=1), mask
    raise ValueError(
        f"saturation mask has shape {mask.shape}; expected (n_pixels,) = ({M.shape[0]},) or M's shape {M.shape}"
    )


def _prepare_data(M: np.ndarray, saturation: Any) -> _PreparedData:
    """Clip negative values and set the saturated pixels apart, copying each row of M at most once."""
    n_negative = int(np.count_nonzero(M < 0)) if M.min(initial=0) < 0 else 0
    pixel_mask, entry_mask = _saturation_masks(M, saturation)
    if n_negative:
        message = (
            f"{n_negative} negative values in the data (e.g. after dark subtraction) were clipped to 0 "
            "because NMF needs non-negative data"
        )
        warnings.warn(message, DataWarning, stacklevel=4)

    if pixel_mask is None or not pixel_mask.any():
        fitted = np.maximum(M, 0) if n_negative else M
        return _PreparedData(fitted, None, np.empty(0, np.intp), M[:0], None, n_negative)

    fit_rows = np.flatnonzero(~pixel_mask)
    masked_rows = np.flatnonzero(pixel_mask)
    if fit_rows.size < 2:
        raise ValueError(
            f"{masked_rows.size} of {M.shape[0]} pixels are saturated, which leaves too few to fit; "
            "shorten the exposure or lower the laser power"
        )
    message = (
        f"{masked_rows.size} saturated pixels (of {M.shape[0]}) were left out of the fit; "
        "their weights are estimated afterwards from their unsaturated wavelengths"
    )
    warnings.warn(message, DataWarning, stacklevel=4)
    fitted = M[fit_rows]
    np.maximum(fitted, 0, out=fitted)
    masked = np.maximum(M[masked_rows], 0)
    weights = None if entry_mask is None else (~entry_mask[masked_rows]).astype(M.dtype)
    return _PreparedData(fitted, fit_rows, masked_rows, masked, weights, n_negative)


def _data_moments(M: np.ndarray, blocks: list[slice]) -> tuple[float, np.ndarray]:
    """Return ‖M‖² and the column sums of M, accumulated in float64."""
    norm_sq = 0.0
    column_sums = np.zeros(M.shape[1])
    for rows in blocks:
        block = M[rows]
        norm_sq += float(np.einsum("ij,ij->", block, block, dtype=np.float64))
        column_sums += np.sum(block, axis=0, dtype=np.float64)
    return norm_sq, column_sums


def _check_spectra_init(
    spectra: Any, n_components: int, n_wavelengths: int, rules: list[Any], fixed: np.ndarray, names: list[str]
) -> np.ndarray:
    spectra = np.asarray(spectra, dtype=np.float64)
    if spectra.shape != (n_components, n_wavelengths):
        raise ValueError(
            f"spectra_init has shape {spectra.shape}; expected (n_components, n_wavelengths) = "
            f"({n_components}, {n_wavelengths})"
        )
    if not np.all(np.isfinite(spectra)) or np.any(spectra < 0):
        raise ValueError("spectra_init must be finite and non-negative")
    zero = [names[p] for p in range(n_components) if not spectra[p].any()]
    if zero:
        raise ValueError(f"initial spectra of {zero} are zero everywhere; a multiplicative update cannot move them")

    # Identical rows stay identical under the updates unless their constraints differ.
    unit = spectra / np.linalg.norm(spectra, axis=1, keepdims=True)
    distinct: list[int] = []
    for p in range(n_components):
        twin = next((q for q in distinct if np.allclose(unit[p], unit[q], rtol=0, atol=1e-9)), None)
        if twin is None:
            distinct.append(p)
        elif rules[p] == rules[twin] and fixed[p] == fixed[twin]:
            raise ValueError(
                f"components {names[twin]!r} and {names[p]!r} start from the same spectrum with the same "
                "constraints, so the updates would keep them identical; give one of them another initial spectrum"
            )
        else:
            log.info("%r and %r start from the same spectrum; their sparsity targets separate them", names[twin], names[p])
    rank = np.linalg.matrix_rank(unit[distinct])
    if rank < len(distinct):
        raise ValueError(
            f"the initial spectra are linearly dependent (rank {rank} for {len(distinct)} distinct spectra); "
            "use fewer components or other initial spectra"
        )
    return spectra


def _check_abundance_init(abundance_init: Any, n_pixels: int, n_components: int, dtype: np.dtype) -> np.ndarray:
    A = np.array(abundance_init, dtype=dtype)
    if A.shape != (n_pixels, n_components):
        raise ValueError(f"abundance_init has shape {A.shape}; expected (n_pixels, n_components) = ({n_pixels}, {n_components})")
    if not np.all(np.isfinite(A)) or np.any(A < 0):
        raise ValueError("abundance_init must be finite and non-negative")
    return A
