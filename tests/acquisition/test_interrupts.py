"""Scans stopped from outside, as a person or an operating system stops them, in real processes.

SIGINT and SIGTERM go to a ``fluoscan scan`` process that drives a laser and a stage served by a
separate ``fluoscan devices simulate`` process; a third client (a plain socket) then reads the
laser's emission state. SIGKILL leaves no chance to clean up: the store must still resume to the
same cube as an uninterrupted scan.
"""

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from fluoscan.acquisition.scan import run_scan
from fluoscan.acquisition.store import ScanStore

FLUOSCAN = [sys.executable, "-m", "fluoscan.cli"]


def write_config(path: Path, *, laser: str = "", stage: str = "", n_lines: int = 12, time_scale: float = 0.02) -> Path:
    """A scan of about 0.1 s per line: 5 s exposures at 2 % of real time, which also shortens cooling and the CDRH delay."""
    laser_section = f'driver = "obis"\nresource = "{laser}"' if laser else 'driver = "simulated"'
    stage_section = f'driver = "zaber"\nport = "{stage}"' if stage else 'driver = "simulated"'
    path.write_text(
        f"""
[scan]
n_lines = {n_lines}
y_start_mm = 30.0
step_mm = 1.0
exposure_s = 5.0
dark_frames = 2

[laser]
{laser_section}
emission_timeout_s = 10.0

[stage]
{stage_section}

[spectrometer]
driver = "simulated"
n_points = 16
horizontal_binning = 16
temperature_c = 15.0

[simulation]
seed = 5
time_scale = {time_scale}
"""
    )
    return path


def lines_done(store: Path) -> int:
    try:
        return int(np.asarray(zarr.open_group(store, mode="r")["line_done"][:]).sum())
    except (FileNotFoundError, KeyError, ValueError):
        return 0


def wait_for_lines(store: Path, count: int, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while lines_done(store) < count:
        if process.poll() is not None:
            pytest.fail(f"the scan exited with {process.returncode} before {count} lines: {process.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {count} lines after {timeout_s} s")
        time.sleep(0.02)


def query_laser(resource: str, command: str) -> str:
    """Send one SCPI query over a plain socket and return the first reply line."""
    _, host, port, _ = resource.split("::")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(command.encode() + b"\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = connection.recv(1024)
            if not chunk:
                break
            reply += chunk
    return reply.decode().split("\r\n")[0]


@pytest.fixture
def served_devices(tmp_path):
    """A ``fluoscan devices simulate`` process; yields (laser resource, stage port)."""
    config = write_config(tmp_path / "devices.toml")
    process = subprocess.Popen(
        [*FLUOSCAN, "devices", "simulate", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        addresses = dict(process.stdout.readline().split() for _ in range(2))
        yield addresses["laser"], addresses["stage"]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)


@pytest.mark.parametrize(("sig", "exit_status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_leaves_laser_off(tmp_path, served_devices, sig, exit_status):
    laser, stage = served_devices
    config = write_config(tmp_path / "scan.toml", laser=laser, stage=stage)
    store = tmp_path / "s.zarr"
    scan = subprocess.Popen(
        [*FLUOSCAN, "scan", str(config), "--output", str(store), "--no-unmix"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_lines(store, 3, scan)
    # The simulated laser serves one client at a time, like a serial port: it answers the
    # separate client once the scan has closed its connection.
    scan.send_signal(sig)
    _, stderr = scan.communicate(timeout=30)

    assert scan.returncode == exit_status
    assert query_laser(laser, "SOUR:AM:STAT?") == "OFF"
    assert f"scan stopped by {sig.name}" in stderr
    assert "Traceback" not in stderr
    kept = ScanStore.open(store)
    assert kept.attrs["status"] == "aborted"
    done = kept.line_done()
    assert done.sum() >= 3
    assert not done[done.argmin():].any()
    np.testing.assert_allclose(kept.group["laser_power"][:][done], 40.0)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    config = write_config(tmp_path / "scan.toml", n_lines=10)
    reference = run_scan(config, tmp_path / "reference.zarr")

    store = tmp_path / "killed.zarr"
    rng = random.Random(int(os.environ.get("FLUOSCAN_KILL_SEED", "7")))
    kill_after = sorted(rng.sample(range(1, 9), 2))
    command = [*FLUOSCAN, "scan", str(config), "--output", str(store), "--no-unmix"]
    for count in kill_after:
        scan = subprocess.Popen([*command, *(["--resume"] if store.exists() else [])], stderr=subprocess.PIPE, text=True)
        wait_for_lines(store, count, scan)
        scan.kill()
        scan.wait(timeout=10)
        assert scan.returncode == -signal.SIGKILL
        assert count <= lines_done(store) < 10
    subprocess.run([*command, "--resume"], check=True, capture_output=True)

    resumed = ScanStore.open(store)
    assert resumed.attrs["status"] == "complete"
    np.testing.assert_array_equal(resumed.raw[:], ScanStore.open(reference).raw[:])
