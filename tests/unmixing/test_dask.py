"""The Dask backend of unmix_store against the in-memory path, on real stores and a real LocalCluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from fluoscan.acquisition.store import ScanStatus, ScanStore
from fluoscan.tests.unmixing.synthetic import MOUSE_COMPONENTS, mouse_scene
from fluoscan.unmixing import DataWarning, SparseNMF, unmix_store
from fluoscan.unmixing.dask_backend import _line_blocks, fit_store
from fluoscan.unmixing.library import library_spectrum

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings("ignore::fluoscan.unmixing.nmf.ConvergenceWarning")

DARK_COUNTS = 300
# Each worker may use this much memory in all; the large store below is 4 times as big.
WORKER_MEMORY_LIMIT = 320 * 2**20
# Relative difference allowed between the two backends: they sum the same float32 blocks, and
# differ only in the order of float64 additions.
TOLERANCE = 1e-5
UNMIXING = {
    "components": [
        {"name": "autofluorescence", "spectrum": "library:autofluorescence"},
        {"name": "icg_lnp", "spectrum": "library:icg_lnp", "sparsity": 0.7},
        {"name": "af750", "spectrum": "library:af750", "sparsity": 0.7},
    ],
    "max_iter": 40,
    "tol": 0.0,
}


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes on 127.0.0.1, each limited to WORKER_MEMORY_LIMIT.

    The workers do not pause at 80 % of the limit, Dask's default, because an interpreter with
    numba and zarr loaded already takes about 240 MiB; the nanny still ends a worker at 95 %.
    """
    import dask

    with dask.config.set({"distributed.worker.memory.pause": False}), distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        memory_limit=WORKER_MEMORY_LIMIT,
    ) as local_cluster:
        yield local_cluster


def write_scan(path: Path, *, lines=None, saturate=(), unmixing=UNMIXING, seed=0) -> None:
    A, S, wavelengths_nm = mouse_scene(seed=seed)
    ny, nx, _ = A.shape
    counts = np.random.default_rng(seed).poisson(A @ S + DARK_COUNTS).astype(np.uint16)
    for y, x in saturate:
        counts[y, x, 10:14] = 65535
    store = ScanStore.create(
        path, n_lines=ny, wavelengths_nm=wavelengths_nm, x=np.arange(nx) * 0.5, x_units="mm", attrs={"config": {"unmixing": unmixing}}
    )
    store.write_dark(np.full((3, nx, wavelengths_nm.size), DARK_COUNTS, dtype=np.uint16))
    for y in range(ny) if lines is None else lines:
        store.write_line(y, counts[y], y_mm=0.5 * y, time_s=1.0e9 + y, laser_power_mw=40.0)
    store.set_status(ScanStatus.COMPLETE if lines is None else ScanStatus.ABORTED, "finished")


def read_result(path: Path) -> dict:
    group = zarr.open_group(path, mode="r", use_consolidated=False)["unmixing"]
    result = {name: np.asarray(group[name][:]) for name in ("abundance", "spectra", "residual", "loss")}
    result["attrs"] = dict(group.attrs)
    return result


def relative_difference(value: np.ndarray, expected: np.ndarray) -> float:
    finite = np.isfinite(expected)
    return float(np.max(np.abs(value[finite] - expected[finite])) / np.max(np.abs(expected[finite])))


def unmix_both(path: Path, scheduler: str, **options) -> tuple[dict, dict]:
    unmix_store(path, force=True, **options)
    in_memory = read_result(path)
    unmix_store(path, force=True, backend="dask", scheduler=scheduler, **options)
    return in_memory, read_result(path)


@pytest.mark.parametrize(
    ("case", "lines", "saturate", "options"),
    [
        ("complete", None, (), {}),
        ("least_squares_start", None, (), {"abundance_start": "lstsq"}),
        ("missing_lines", [y for y in range(24) if y not in (5, 6, 17)], (), {}),
        ("saturated_pixels", None, ((3, 4), (20, 30)), {}),
        ("auto_sparsity", None, (), {"sparsity": [None, "auto", 0.8]}),
        ("two_components", None, (), {"components": ["autofluorescence", "icg_lnp"], "sparsity": [None, 0.7]}),
    ],
)
def test_dask_matches_in_memory(tmp_path, cluster, case, lines, saturate, options):
    path = tmp_path / f"{case}.zarr"
    write_scan(path, lines=lines, saturate=saturate)

    in_memory, dask = unmix_both(path, cluster.scheduler_address, **options)

    assert np.array_equal(np.isnan(dask["abundance"]), np.isnan(in_memory["abundance"]))
    assert relative_difference(dask["abundance"], in_memory["abundance"]) < TOLERANCE
    assert relative_difference(dask["spectra"], in_memory["spectra"]) < TOLERANCE
    assert relative_difference(dask["residual"], in_memory["residual"]) < TOLERANCE
    assert dask["loss"] == pytest.approx(in_memory["loss"], rel=TOLERANCE)
    for key in ("n_iter", "n_zeroed", "n_clipped", "n_saturated_pixels", "components", "sparsity_target"):
        assert dask["attrs"][key] == in_memory["attrs"][key], key


def test_dask_rejects_auto_spectra(tmp_path, cluster):
    path = tmp_path / "auto.zarr"
    write_scan(path, unmixing={"components": [{"name": "a", "spectrum": "auto"}, {"name": "b", "spectrum": "mean"}]})
    with pytest.raises(ValueError, match='"auto" spectrum'):
        unmix_store(path, backend="dask", scheduler=cluster.scheduler_address)


def test_dask_rejects_kullback_leibler(tmp_path, cluster):
    path = tmp_path / "kl.zarr"
    write_scan(path)
    with pytest.raises(ValueError, match="Frobenius loss only"):
        unmix_store(path, loss="kullback-leibler", backend="dask", scheduler=cluster.scheduler_address)


def test_unknown_backend_is_rejected(tmp_path):
    path = tmp_path / "scan.zarr"
    write_scan(path)
    with pytest.raises(ValueError, match='backend must be "numpy" or "dask"'):
        unmix_store(path, backend="spark")


def test_saturated_pixels_are_reported(tmp_path, cluster):
    path = tmp_path / "saturated.zarr"
    write_scan(path, saturate=((3, 4),))
    with ScanStore.open(path) as store, pytest.warns(DataWarning, match="1 saturated pixels"):
        fit_store(
            store,
            components=list(MOUSE_COMPONENTS),
            spectra=[f"library:{name}" for name in MOUSE_COMPONENTS],
            sparsity=[None, 0.7, 0.7],
            fixed=[False] * 3,
            max_iter=3,
            tol=0.0,
            saturation_counts=65535,
            scheduler=cluster.scheduler_address,
        )


@pytest.mark.parametrize(
    ("done", "lines_per_block", "expected"),
    [
        ([1, 1, 1, 1, 1], 2, [(0, 2), (2, 4), (4, 5)]),
        ([1, 0, 1, 1, 0, 1], 4, [(0, 1), (2, 4), (5, 6)]),
        ([0, 0, 1], 1, [(2, 3)]),
        ([0, 0], 3, []),
    ],
)
def test_line_blocks_follow_acquired_runs(done, lines_per_block, expected):
    assert _line_blocks(np.array(done, dtype=bool), lines_per_block) == expected


# ---------------------------------------------------------------------- a store larger than the workers' memory

LARGE_SHAPE = (1280, 1024, 512)  # uint16: 1280 MiB, 4 x WORKER_MEMORY_LIMIT
LARGE_COMPONENTS = ("autofluorescence", "icg_lnp", "af750")
LARGE_SPARSITY = [None, 0.9, 0.9]
LARGE_MAX_ITER = 1
SLAB_LINES = 64


def large_slab(wavelengths_nm: np.ndarray) -> np.ndarray:
    """Return 64 lines of counts (lines, x, wavelength) uint16: a body, two marker tubes, noise."""
    n_points, n_wavelengths = LARGE_SHAPE[1:]
    S = np.stack([library_spectrum(name, wavelengths_nm) for name in LARGE_COMPONENTS]).astype(np.float32)
    lines = np.arange(SLAB_LINES)
    body = 200.0 * np.exp(-(((np.arange(n_points) - n_points / 2) / (0.4 * n_points)) ** 2))
    A = np.zeros((SLAB_LINES, n_points, 3), dtype=np.float32)
    A[..., 0] = body * (1.0 + 0.3 * np.sin(lines / 10.0))[:, None]
    A[4:8, 100:900, 1] = 300.0
    A[40:43, 100:900, 2] = 250.0
    counts = A @ S
    counts += np.random.default_rng(0).normal(10.0, 4.0, counts.shape).astype(np.float32)
    return np.clip(counts, 0, 65535).astype(np.uint16)


def write_large_store(path: Path) -> np.ndarray:
    """Write a store of LARGE_SHAPE, uncompressed, repeating one slab of 64 lines; return the slab."""
    n_lines, n_points, n_wavelengths = LARGE_SHAPE
    wavelengths_nm = np.linspace(700.0, 950.0, n_wavelengths)
    unmixing = {
        "components": [{"name": name, "spectrum": f"library:{name}", "sparsity": target} for name, target in zip(LARGE_COMPONENTS, LARGE_SPARSITY)],
        "max_iter": LARGE_MAX_ITER,
        "tol": 0.0,
    }  # fmt: skip
    store = ScanStore.create(
        path, n_lines=1, wavelengths_nm=wavelengths_nm, x=np.arange(n_points, dtype=float), x_units="index",
        attrs={"config": {"unmixing": unmixing}},
    )  # fmt: skip
    group = store.group
    # raw keeps the contract's one chunk per line but skips compression, so that writing and
    # reading 1.25 GiB costs no compression time.
    raw = group.create_array(
        "raw", shape=LARGE_SHAPE, chunks=(1, n_points, n_wavelengths), dtype=np.uint16, fill_value=0,
        dimension_names=["y", "x", "wavelength"], compressors=None, overwrite=True,
    )  # fmt: skip
    for name, dtype in (("y", float), ("line_done", bool), ("line_time", float), ("laser_power", float)):
        group.create_array(name, shape=(n_lines,), dtype=dtype, dimension_names=["y"], overwrite=True)
    group["line_done"][:] = True
    group["y"][:] = np.arange(n_lines) * 0.1
    slab = large_slab(wavelengths_nm)
    for start in range(0, n_lines, SLAB_LINES):
        raw[start : start + SLAB_LINES] = slab
    store.set_status(ScanStatus.COMPLETE, "finished")
    return slab


def worker_peak_bytes(client) -> list[int]:
    """Return each worker process's peak resident memory (VmHWM) in bytes."""

    def peak() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024

    return list(client.run(peak).values())


@pytest.mark.slow
def test_store_four_times_worker_memory(tmp_path, cluster):
    path = tmp_path / "large.zarr"
    slab = write_large_store(path)
    assert int(np.prod(LARGE_SHAPE)) * 2 >= 4 * WORKER_MEMORY_LIMIT

    unmix_store(path, backend="dask", scheduler=cluster.scheduler_address)
    with distributed.Client(cluster) as client:
        peaks = worker_peak_bytes(client)
    dask = read_result(path)

    # The in-memory estimator on the same cube (the store has no dark frame), with the settings
    # that unmix_store passes it.
    M = np.tile(slab.reshape(-1, LARGE_SHAPE[2]).astype(np.float32), (LARGE_SHAPE[0] // SLAB_LINES, 1))
    S = np.stack([library_spectrum(name, ScanStore.open(path).wavelengths_nm()) for name in LARGE_COMPONENTS])
    model = SparseNMF(3, sparsity=LARGE_SPARSITY, components=list(LARGE_COMPONENTS), max_iter=LARGE_MAX_ITER, tol=0.0)
    A = model.fit_transform(M, S)

    assert max(peaks) < WORKER_MEMORY_LIMIT
    assert relative_difference(dask["abundance"].reshape(-1, 3), A) < TOLERANCE
    assert relative_difference(dask["spectra"], model.components_) < TOLERANCE
    assert dask["attrs"]["n_zeroed"] == model.n_zeroed_.tolist()
