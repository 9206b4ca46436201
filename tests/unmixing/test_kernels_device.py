"""The device dispatch of SparseNMF, with numpy in place of CuPy; the GPU test runs only where CuPy finds a GPU."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

from fluoscan.unmixing import ConvergenceWarning, SparseNMF, array_api, compiled
from fluoscan.tests.unmixing.synthetic import mouse_scene

HAS_CUPY = importlib.util.find_spec("cupy") is not None


def mouse_data():
    A_true, S_true, _ = mouse_scene(ny=30, nx=40, seed=2)
    return (A_true.reshape(-1, 3) @ S_true).astype(np.float32), (S_true * 1.1 + 0.05).astype(np.float32)


def fit(device: str, sparsity, M, spectra_init, **options):
    model = SparseNMF(3, sparsity=sparsity, max_iter=40, tol=0, n_jobs=1, device=device, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        A = model.fit_transform(M, spectra_init)
    return model, A


@pytest.mark.parametrize("sparsity", [None, [None, 0.8, 0.8], [None, "auto", 0.5]])
@pytest.mark.parametrize("abundance_start", ["constant", "lstsq"])
def test_cuda_dispatch_with_numpy_matches_cpu(monkeypatch, sparsity, abundance_start):
    M, spectra_init = mouse_data()
    monkeypatch.setattr(compiled, "AVAILABLE", False)
    cpu_model, cpu_A = fit("cpu", sparsity, M, spectra_init, abundance_start=abundance_start)
    used = []
    monkeypatch.setattr(array_api, "namespace", lambda device: used.append(device) or np)
    monkeypatch.setattr("fluoscan.unmixing.loop.namespace", array_api.namespace)

    device_model, device_A = fit("cuda", sparsity, M, spectra_init, abundance_start=abundance_start)

    assert used == ["cuda"]
    assert np.allclose(device_A, cpu_A, rtol=1e-5, atol=1e-6 * cpu_A.max())
    assert np.allclose(device_model.components_, cpu_model.components_, rtol=1e-5, atol=1e-7)
    assert device_model.n_zeroed_.tolist() == cpu_model.n_zeroed_.tolist()
    assert device_model.loss_history_ == pytest.approx(cpu_model.loss_history_, rel=1e-5)


@pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed, so the missing-CuPy error cannot be raised")
def test_cuda_without_cupy_names_the_package():
    M, spectra_init = mouse_data()
    with pytest.raises(ImportError, match="needs CuPy"):
        fit("cuda", None, M, spectra_init)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device": "tpu"}, "device must be one of 'cpu', 'cuda'"),
        ({"device": "cuda", "loss": "kullback-leibler"}, "Frobenius loss only"),
    ],
)
def test_device_settings_are_checked(options, message):
    M, spectra_init = mouse_data()
    with pytest.raises(ValueError, match=message):
        SparseNMF(3, **options).fit(M, spectra_init)


def test_namespace_rejects_unknown_device():
    with pytest.raises(ValueError, match="device must be one of"):
        array_api.namespace("opencl")


@pytest.mark.skipif(not HAS_CUPY, reason="CuPy is not installed; the GPU path runs only where it is")
def test_cuda_fit_matches_cpu_on_gpu():
    import cupy

    if cupy.cuda.runtime.getDeviceCount() == 0:
        pytest.skip("CuPy finds no GPU")
    M, spectra_init = mouse_data()
    cpu_model, cpu_A = fit("cpu", [None, 0.8, 0.8], M, spectra_init)
    gpu_model, gpu_A = fit("cuda", [None, 0.8, 0.8], M, spectra_init)
    assert np.allclose(gpu_A, cpu_A, rtol=1e-3, atol=1e-4 * cpu_A.max())
    assert np.allclose(gpu_model.components_, cpu_model.components_, rtol=1e-3, atol=1e-5)
