"""The update loop's passes over M on another array library's device: CuPy on an NVIDIA GPU.

:class:`ArrayExecutor` runs the three Frobenius passes of :class:`fluoscan.unmixing.loop._Updater`
with the functions of an array namespace ``xp`` (numpy's API, which CuPy mirrors). M is copied to
the device once; A_work and S stay on the host, where the sparsity step runs, and travel to the
device and back once per pass (n_pixels x P values, 1/170 of M for 512 wavelengths).

NOTE: the CuPy path has been run only with numpy standing in for CuPy (the tests); it has not run
on GPU hardware.
"""

from __future__ import annotations

import logging
from enum import Enum
from types import ModuleType
from typing import Any

import numpy as np

from fluoscan.unmixing.kernels import EPSILON, _aligned_blocks

log = logging.getLogger(__name__)


class Device(str, Enum):
    """Where the passes over M run."""

    CPU = "cpu"
    CUDA = "cuda"


def namespace(device: Device | str) -> ModuleType:
    """Return the array library for ``device``: numpy for "cpu", CuPy for "cuda".

    Raises
    ------
    ImportError
        If ``device`` is "cuda" and CuPy is not installed.
    ValueError
        If ``device`` is not one of the :class:`Device` values.
    """
    try:
        device = Device(device)
    except ValueError:
        raise ValueError(f"device must be one of {[item.value for item in Device]}, got {device!r}") from None
    if device is Device.CPU:
        return np
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(
            "device='cuda' needs CuPy, which is not installed; install the cupy-cuda12x package that "
            "matches your CUDA version, or use device='cpu'"
        ) from exc
    return cupy


def to_numpy(array: Any) -> np.ndarray:
    """Copy an array of any namespace to a numpy array on the host (no copy for numpy arrays)."""
    if isinstance(array, np.ndarray):
        return array
    return array.get()


class ArrayExecutor:
    """The passes over M with the functions of ``xp``, M resident on xp's device.

    Each pass works through row blocks of ``block_rows`` rows, and the block sums of AᵀM are
    added in float64 in block order, as on the CPU.
    """

    def __init__(self, M: np.ndarray, xp: ModuleType, block_rows: int) -> None:
        self.xp, self.block_rows = xp, block_rows
        self.n_rows, self.n_wavelengths = M.shape
        self.M = xp.asarray(M)
        self.blocks = _aligned_blocks(self.n_rows, 0, block_rows)
        log.info("copied M (%d x %d, %s) to the %s device", self.n_rows, self.n_wavelengths, M.dtype, xp.__name__)

    def frobenius_pass(self, A_work: np.ndarray, S: np.ndarray, SSt: np.ndarray, accumulate: np.ndarray) -> np.ndarray:
        xp = self.xp
        A, S, SSt = xp.asarray(A_work), xp.asarray(S), xp.asarray(SSt)
        columns = xp.asarray(np.flatnonzero(accumulate))
        AtM = xp.zeros((S.shape[0], self.n_wavelengths), dtype=xp.float64)
        for rows in self.blocks:
            M, A_block = self.M[rows], A[rows]
            numerator = M @ S.T
            denominator = A_block @ SSt
            denominator[denominator == 0] = EPSILON
            A_block *= numerator / denominator
            AtM[columns] += (A_block[:, columns].T @ M).astype(xp.float64)
        A_work[...] = to_numpy(A)
        return to_numpy(AtM)

    def rows_product(self, W: np.ndarray) -> np.ndarray:
        xp = self.xp
        W_device = xp.asarray(W)
        out = xp.zeros((W.shape[1], self.n_wavelengths), dtype=xp.float64)
        for rows in self.blocks:
            if W[rows].any():
                out += (W_device[rows].T @ self.M[rows]).astype(xp.float64)
        return to_numpy(out)

    def squared_residual(self, A: np.ndarray, S: np.ndarray) -> float:
        xp = self.xp
        A_device, S_device = xp.asarray(A), xp.asarray(S)
        total = 0.0
        for rows in self.blocks:
            residual = self.M[rows] - A_device[rows] @ S_device
            total += float(xp.sum(xp.sum(residual * residual, axis=1), dtype=xp.float64))
        return total
