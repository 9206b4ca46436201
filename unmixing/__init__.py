"""Unmixing: sparse NMF of a spectral cube into component weight maps and spectra.

The numerical core (:mod:`.nmf`, :mod:`.sparsity`, :mod:`.metrics`, :mod:`.init`) works on numpy
arrays and does no I/O; :func:`unmix_store` reads a scan store and writes its ``unmixing/`` group.
"""

from fluoscan.unmixing.metrics import (
    TruthScores,
    abundance_rmse,
    compare_to_truth,
    map_correlation,
    match_components,
    residual_map,
    spectral_angle,
)
from fluoscan.unmixing.nmf import ConvergenceWarning, DataWarning, Loss, SparseNMF
from fluoscan.unmixing.sparsity import hoyer_sparsity
from fluoscan.unmixing.store import sweep_sparsity, unmix_store

__all__ = [
    "ConvergenceWarning",
    "DataWarning",
    "Loss",
    "SparseNMF",
    "TruthScores",
    "abundance_rmse",
    "compare_to_truth",
    "hoyer_sparsity",
    "map_correlation",
    "match_components",
    "residual_map",
    "spectral_angle",
    "sweep_sparsity",
    "unmix_store",
]
