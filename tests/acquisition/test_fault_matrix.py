"""The fault matrix: {laser, stage, camera, writer} x {timeout, disconnect, garbled, rejected} x {first, middle, last line}.

Every case checks that the laser ends with emission off, that no finished line is lost, the store's
status, and that ``resume`` completes the cube bit for bit like an uninterrupted scan.

Faults are injected by the simulators on the wire (laser, stage) or in the stand-in SDK (camera),
and by failing file writes for the writer. What each device does with a fault is the driver's
decision; the expected outcome of each row is part of the table:

- laser: a dropped connection is reopened once and a garbled reply to a read-only query is asked
  again, so the scan completes; a timeout or a rejection ends it.
- writer "timeout" is a disk slower than the camera: the camera waits for the queue, the scan completes.
"""

import errno
import logging
import time

import pytest

from fluoscan.acquisition.scan import run_scan
from fluoscan.acquisition.store import ScanStatus, ScanStore
from fluoscan.acquisition.writer import WriterError
from fluoscan.drivers import DeviceDisconnected, DeviceError, DeviceProtocolError, DeviceTimeout
from fluoscan.simulators.faults import Fault, FaultKind
from fluoscan.tests.acquisition.scan_helpers import assert_same_cube, recording_laser

N_LINES = 8
DARK_FRAMES = 2
POSITIONS = {"first": 0, "middle": N_LINES // 2, "last": N_LINES - 1}
FAULTS = (FaultKind.TIMEOUT, FaultKind.DISCONNECT, FaultKind.GARBLE, FaultKind.REJECT)

# Outcome per (device, fault): the exception the scan ends with, or None when the scan completes.
EXPECTED = {
    ("laser", FaultKind.TIMEOUT): DeviceTimeout,
    ("laser", FaultKind.DISCONNECT): None,
    ("laser", FaultKind.GARBLE): None,
    ("laser", FaultKind.REJECT): DeviceError,
    ("stage", FaultKind.TIMEOUT): DeviceTimeout,
    ("stage", FaultKind.DISCONNECT): DeviceDisconnected,
    ("stage", FaultKind.GARBLE): DeviceProtocolError,
    ("stage", FaultKind.REJECT): DeviceError,
    ("camera", FaultKind.TIMEOUT): DeviceTimeout,
    ("camera", FaultKind.DISCONNECT): DeviceDisconnected,
    ("camera", FaultKind.GARBLE): DeviceProtocolError,
    ("camera", FaultKind.REJECT): DeviceError,
    ("writer", FaultKind.TIMEOUT): None,
    ("writer", FaultKind.DISCONNECT): WriterError,
    ("writer", FaultKind.GARBLE): WriterError,
    ("writer", FaultKind.REJECT): WriterError,
}

POWER_QUERY = "SOUR:POW:LEV?"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted scan: its cube, and how many laser power queries each line makes."""
    path = tmp_path_factory.mktemp("reference") / "reference.zarr"
    with recording_laser() as laser:
        run_scan(laser.config(), path)
        power_queries = [r for r in laser.requests if r.upper() == POWER_QUERY]
    assert len(power_queries) % N_LINES == 0
    return ScanStore.open(path).raw[:], len(power_queries) // N_LINES


class FailingWrites:
    """Replaces ScanStore.write_lines so that writing line ``at_line`` fails the way ``kind`` says."""

    def __init__(self, kind: FaultKind, at_line: int):
        self.kind, self.at_line = kind, at_line
        self.original = ScanStore.write_lines

    def __call__(self, store, indices, frames, **kwargs):
        if self.at_line in indices:
            if self.kind is FaultKind.TIMEOUT:
                # A slow disk: this write takes longer than acquiring the rest of the scan.
                time.sleep(0.3)
            elif self.kind is FaultKind.DISCONNECT:
                raise OSError(errno.EIO, "Input/output error: the disk was disconnected")
            elif self.kind is FaultKind.GARBLE:
                frames = frames[:, :, :-1]  # truncated frames: the store refuses them
            elif self.kind is FaultKind.REJECT:
                raise PermissionError(errno.EACCES, "Permission denied")
        return self.original(store, indices, frames, **kwargs)


def injected(device: str, kind: FaultKind, line: int, power_queries_per_line: int, mocker):
    """Return (laser faults, device options) that make ``device`` fail with ``kind`` at ``line``."""
    if device == "laser":
        # The scan's own power readback is the last power query of each line.
        return [Fault(kind, command=POWER_QUERY, occurrence=power_queries_per_line * (line + 1))], {}
    if device == "stage":
        return None, {"stage_faults": [Fault(kind, command="move abs", occurrence=line + 1)]}
    if device == "camera":
        return None, {"spectrometer_faults": [Fault(kind, command="frame", occurrence=DARK_FRAMES + line + 1)]}
    mocker.patch.object(ScanStore, "write_lines", autospec=True, side_effect=FailingWrites(kind, line))
    return None, {}


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("kind", FAULTS, ids=[k.value for k in FAULTS])
@pytest.mark.parametrize("device", ["laser", "stage", "camera", "writer"])
def test_fault_keeps_lines_and_laser_off(tmp_path, reference, mocker, caplog, device, kind, position):
    reference_cube, power_queries_per_line = reference
    line = POSITIONS[position]
    expected_error = EXPECTED[device, kind]
    laser_faults, options = injected(device, kind, line, power_queries_per_line, mocker)
    store_path = tmp_path / "s.zarr"
    writer_queue = {"scan": {"writer_queue_lines": 1}} if device == "writer" else {}

    with recording_laser(laser_faults) as laser:
        config = laser.config(**writer_queue)
        if expected_error is None:
            with caplog.at_level(logging.WARNING):
                run_scan(config, store_path, device_options=options)
        else:
            with pytest.raises(expected_error) as raised:
                run_scan(config, store_path, device_options=options)
        emission_after = laser.device.emission
        last_emission_request = laser.emission_requests()[-1].upper()
    mocker.stopall()

    store = ScanStore.open(store_path)
    assert not emission_after
    assert last_emission_request.endswith("OFF")
    if expected_error is None:
        assert store.status is ScanStatus.COMPLETE
        assert store.line_done().all()
    else:
        assert store.status is ScanStatus.ABORTED
        assert store.attrs["end_reason"].startswith(raised.type.__name__)
        assert store.line_done().tolist() == [True] * line + [False] * (N_LINES - line)
    if (device, kind) == ("writer", FaultKind.TIMEOUT):
        assert "the camera waits for the disk" in caplog.text

    if expected_error is not None:
        with recording_laser() as laser:
            run_scan(laser.config(**writer_queue), store_path, resume=True)
            assert not laser.device.emission
    resumed = ScanStore.open(store_path)
    assert resumed.status is ScanStatus.COMPLETE
    assert_same_cube(resumed.raw[:], reference_cube)
