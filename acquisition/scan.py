"""The scan: the lab procedure for one spectrally resolved line scan of an animal.

Open the devices and check everything that can be checked before the laser emits. Home the stage
and take dark frames with the laser off. Switch the laser on, then for each line move, wait, read
back the position, acquire, and hand the frame to the writer. The laser is switched off at the end, on every
error and on Ctrl-C or SIGTERM; :func:`laser_emitting` is the one place that rule lives.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fluoscan.acquisition.config import ConfigError, FluoscanConfig, HomingPolicy, load_config
from fluoscan.acquisition.devices import Devices, GroundTruthSource, open_devices
from fluoscan.acquisition.store import MAIN, REFERENCE, ScanStatus, ScanStore, StoreError, store_parts
from fluoscan.acquisition.writer import LineRecord, LineWriter
from fluoscan.drivers import DeviceError, Laser

log = logging.getLogger(__name__)

# Configuration keys that may differ between an interrupted scan and its resumption. They change
# neither the raster nor the data: a device may come back on another port (its identity is checked
# separately), and timeouts, buffering, simulated timing and unmixing do not touch the frames.
RESUMABLE_KEYS = frozenset(
    {
        "laser.resource",
        "stage.port",
        "scan.writer_queue_lines",
        "laser.timeout_s",
        "laser.emission_timeout_s",
        "stage.timeout_s",
        "stage.move_timeout_s",
        "spectrometer.temperature_timeout_s",
        "spectrometer.frame_timeout_s",
        "simulation.time_scale",
        "unmixing",
    }
)

_SOFTWARE = ("numpy", "zarr", "pydantic", "pyvisa", "pyvisa-py", "pyserial", "pylablib")


class ScanAborted(Exception):
    """The scan was stopped by a signal (Ctrl-C or SIGTERM) before every line was acquired."""

    def __init__(self, signal_number: int) -> None:
        self.signal_number = signal_number
        super().__init__(f"scan stopped by {signal.Signals(signal_number).name}")


class ScanProgress(Protocol):
    """Receives progress updates; the CLI shows a progress bar, the default logs."""

    def start(self, total_lines: int, done_lines: int) -> None: ...

    def line_done(self, index: int) -> None: ...

    def close(self) -> None: ...


class LogProgress:
    """Progress as log lines: one every ``every`` lines, with rate and estimated time left."""

    def __init__(self, every: int = 10) -> None:
        self.every = every
        self._total = 0
        self._done = 0
        self._started = 0.0
        self._first_done = 0

    def start(self, total_lines: int, done_lines: int) -> None:
        self._total, self._done, self._first_done = total_lines, done_lines, done_lines
        self._started = time.perf_counter()

    def line_done(self, index: int) -> None:
        self._done += 1
        if self._done % self.every and self._done != self._total:
            return
        elapsed = time.perf_counter() - self._started
        rate = (self._done - self._first_done) / elapsed if elapsed > 0 else math.inf
        left_s = (self._total - self._done) / rate if rate > 0 else math.inf
        log.info("line %d/%d, %.1f lines/s, about %.0f s left", self._done, self._total, rate, left_s)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------- safety


def switch_laser_off(laser: Laser) -> None:
    """Command emission off and check the readback, trying twice before giving up loudly."""
    last_error: BaseException | None = None
    for attempt in (1, 2):
        try:
            laser.set_emission(False)
            if not laser.emission():
                log.info("laser emission off")
                return
            last_error = DeviceError("laser still reports emission ON after the OFF command")
        except (DeviceError, KeyboardInterrupt, ScanAborted) as exc:
            last_error = exc
        log.error("switching the laser off failed (attempt %d of 2): %s", attempt, last_error)
    log.critical("THE LASER MAY STILL BE EMITTING: switch it off at the key or the power supply")
    raise DeviceError(f"could not switch the laser off: {last_error}; switch it off by hand") from last_error


@contextlib.contextmanager
def laser_emitting(laser: Laser, power_mw: float) -> Iterator[None]:
    """Emit at ``power_mw`` inside the block; emission is switched off however the block ends."""
    try:
        laser.set_power_mw(power_mw)
        laser.set_emission(True)
        log.info("laser emission on at %.3g mW", power_mw)
        yield
    finally:
        switch_laser_off(laser)


@contextlib.contextmanager
def signals_abort_scan() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`ScanAborted` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    stopping = False

    def handler(signum: int, frame: Any) -> None:
        # Only the first signal interrupts: a second one must not cut short the writing of
        # queued lines or the laser's switch-off.
        nonlocal stopping
        if stopping:
            log.warning("already stopping (%s ignored): writing queued lines and switching the laser off", signal.Signals(signum).name)
            return
        stopping = True
        raise ScanAborted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------------------- checks


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Return the keys whose values differ and are not allowed to change on resume."""
    old, new = _flatten(stored), _flatten(current)
    differing = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key in RESUMABLE_KEYS or key.split(".")[0] in RESUMABLE_KEYS:
            continue
        differing.append(f"{key}: store has {old.get(key)!r}, configuration has {new.get(key)!r}")
    return differing


def check_output(output: Path, *, resume: bool, overwrite: bool, part: str | None = None) -> None:
    """Check the output path before any device opens."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: resume keeps the store, overwrite replaces it")
    present = store_parts(output)
    what = "reference acquisition" if part == REFERENCE else "scan"
    if resume:
        if (part or MAIN) not in present:
            raise StoreError(f"cannot resume: {output} contains no {what}; start it without --resume")
        return
    if (part or MAIN) in present and not overwrite:
        held = "already holds a reference acquisition" if part == REFERENCE else "already exists"
        raise StoreError(f"output store {output} {held}; pass --overwrite to replace it or --resume to continue it")
    if output.exists() and not present and (output.is_file() or any(output.iterdir())):
        raise StoreError(f"output path {output} exists and is not a fluoscan store; choose another --output")
    parent = output.absolute().parent
    if not parent.is_dir():
        raise StoreError(f"output folder {parent} does not exist; create it or choose another --output")


def check_devices(config: FluoscanConfig, devices: Devices) -> None:
    """Check the devices against the configuration; raises before anything moves or emits."""
    laser, stage = devices.laser, devices.stage
    if not laser.interlock_closed():
        raise DeviceError("laser interlock is open (or the key switch is off): close it before scanning")
    low_mw, high_mw = laser.power_limits_mw()
    if not low_mw <= config.laser.power_mw <= high_mw:
        raise ConfigError(
            f"laser.power_mw = {config.laser.power_mw:g} is outside the laser's range {low_mw:g}..{high_mw:g} mW"
        )
    low_mm, high_mm = stage.limits_mm()
    first, last = sorted((config.scan.y_start_mm, config.scan.y_stop_mm))
    if first < low_mm or last > high_mm:
        raise ConfigError(
            f"scan positions {first:g}..{last:g} mm leave the stage's travel {low_mm:g}..{high_mm:g} mm: "
            "change scan.y_start_mm, scan.step_mm or scan.n_lines"
        )


def check_disk_space(output: Path, n_bytes: int) -> None:
    """Raise if the output's file system has less free space than ``n_bytes`` plus a 5 % margin."""
    folder = output if output.is_dir() else output.absolute().parent
    free = shutil.disk_usage(folder).free
    if free < n_bytes * 1.05:
        raise StoreError(
            f"not enough disk space for the scan at {folder}: the cube needs {n_bytes / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB are free; free space or choose another --output"
        )


def software_versions() -> dict[str, str]:
    versions = {}
    for package in _SOFTWARE:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# ---------------------------------------------------------------------------------------- the scan


def _prepare_stage(config: FluoscanConfig, devices: Devices) -> None:
    stage = devices.stage
    if stage.is_homed():
        return
    if config.stage.homing is HomingPolicy.REQUIRE:
        raise DeviceError('the stage is not homed and stage.homing = "require": home it, or set stage.homing = "home"')
    log.info("homing the stage")
    stage.home()


def _acquire_dark(config: FluoscanConfig, devices: Devices, store: ScanStore) -> None:
    if config.scan.dark_frames == 0 or store.dark_frames() is not None:
        return
    if devices.laser.emission():
        raise DeviceError("the laser reports emission ON before the dark frames; it must be off")
    frames = np.stack([devices.spectrometer.acquire() for _ in range(config.scan.dark_frames)])
    store.write_dark(frames)
    log.info("recorded %d dark frames", len(frames))


def _open_store(
    config: FluoscanConfig, devices: Devices, output: Path, *, resume: bool, overwrite: bool, part: str | None
) -> ScanStore:
    identities = devices.identities()
    wavelengths_nm = devices.spectrometer.wavelengths_nm()
    n_points, n_wavelengths = devices.spectrometer.frame_shape()
    if resume:
        store = ScanStore.open(output, mode="r+", part=part)
        differences = config_differences(store.attrs.get("config", {}), config.to_dict())
        if store.attrs.get("devices") != identities:
            differences.append(f"devices: store has {store.attrs.get('devices')}, connected are {identities}")
        if store.shape != (config.scan.n_lines, n_points, n_wavelengths):
            differences.append(f"cube shape: store has {store.shape}, devices give {(config.scan.n_lines, n_points, n_wavelengths)}")
        if differences:
            raise ConfigError(f"cannot resume {output}: it was recorded differently:\n  " + "\n  ".join(differences))
        store.set_status(ScanStatus.ACQUIRING)
        return store

    dtype = np.dtype(devices.spectrometer.frame_dtype())
    check_disk_space(output, config.scan.n_lines * n_points * n_wavelengths * dtype.itemsize)
    pitch = config.spectrometer.point_pitch_mm
    x = np.arange(n_points) * pitch if pitch is not None else np.arange(n_points, dtype=float)
    store = ScanStore.create(
        output,
        n_lines=config.scan.n_lines,
        wavelengths_nm=wavelengths_nm,
        x=x,
        x_units="mm" if pitch is not None else "point index",
        dtype=dtype,
        attrs={"config": config.to_dict(), "devices": identities, "software": software_versions()},
        overwrite=overwrite,
        part=part,
    )
    if isinstance(devices.spectrometer, GroundTruthSource):
        abundance, spectra, names = devices.spectrometer.ground_truth(np.asarray(config.scan.positions_mm()))
        store.write_truth(abundance, spectra, names)
    return store


def _scan_lines(
    config: FluoscanConfig,
    devices: Devices,
    store: ScanStore,
    progress: ScanProgress,
    on_line: Callable[[int], Any] | None,
) -> None:
    positions = config.scan.positions_mm()
    done = store.line_done()
    todo = [i for i in range(config.scan.n_lines) if not done[i]]
    progress.start(config.scan.n_lines, config.scan.n_lines - len(todo))
    laser, stage, camera = devices.laser, devices.stage, devices.spectrometer

    with LineWriter(store, config.scan.writer_queue_lines) as writer:
        for index in todo:
            y_mm = stage.move_to(positions[index])
            if config.stage.settle_s:
                time.sleep(config.stage.settle_s)
            frame = camera.acquire()
            record = LineRecord(index, frame, y_mm=y_mm, time_s=time.time(), laser_power_mw=laser.power_mw())
            writer.put(record)
            progress.line_done(index)
            if on_line is not None:
                on_line(index)
    if writer.waits_for_disk:
        log.warning("the camera waited %.2f s for the disk over %d lines", writer.wait_for_disk_s, writer.waits_for_disk)


def run_scan(
    config: FluoscanConfig | str | Path,
    output: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_complete: Callable[[Path], Any] | None = None,
    progress: ScanProgress | None = None,
    on_line: Callable[[int], Any] | None = None,
    device_options: dict[str, Any] | None = None,
    reference: bool = False,
) -> Path:
    """Acquire a whole scan into a Zarr store and return the store's path.

    Parameters
    ----------
    config : FluoscanConfig or path
        The scan configuration, or the path of a TOML file.
    output : path
        The store to write. It must not exist unless ``resume`` or ``overwrite`` is given.
    resume : bool
        Continue the store's scan from its first line not done. The configuration and the devices
        must match the store's (see :data:`RESUMABLE_KEYS` for what may differ).
    overwrite : bool
        Replace an existing store.
    on_complete : callable, optional
        Called with the store's path once the scan is complete, e.g. ``fluoscan.unmixing.unmix_store``.
    progress : ScanProgress, optional
        Receives progress updates; logs every 10 lines by default.
    on_line : callable, optional
        Called with each line's index once the line is queued for writing (e.g. a preview). It runs
        in the acquisition loop, so it must be quick.
    device_options : dict, optional
        Passed to device factories as ``DeviceContext.options`` (fault injection in tests).
    reference : bool
        Record the reference acquisition (the animal before the markers are given) into the group
        ``reference/`` of ``output``, next to the main scan. Unmixing can then start the
        autofluorescence from its mean spectrum (``spectrum = "reference"``). ``on_complete`` is not
        called for it.

    Raises
    ------
    ConfigError, StoreError, DeviceError, WriterError
        Before emission when a check fails, or during the scan; the laser is off when they propagate.
    ScanAborted
        On SIGINT or SIGTERM (main thread only); the store keeps every finished line, status "aborted".
    """
    if not isinstance(config, FluoscanConfig):
        config = load_config(config)
    output = Path(output)
    progress = progress or LogProgress()
    part = REFERENCE if reference else None
    check_output(output, resume=resume, overwrite=overwrite, part=part)

    store: ScanStore | None = None
    with signals_abort_scan():
        try:
            with open_devices(config, device_options) as devices:
                check_devices(config, devices)
                devices.laser.set_emission(False)
                _prepare_stage(config, devices)
                devices.spectrometer.set_exposure_s(config.scan.exposure_s)
                store = _open_store(config, devices, output, resume=resume, overwrite=overwrite, part=part)
                _acquire_dark(config, devices, store)
                with laser_emitting(devices.laser, config.laser.power_mw):
                    _scan_lines(config, devices, store, progress, on_line)
            store.set_status(ScanStatus.COMPLETE, "all lines acquired")
            log.info("scan complete: %s", output)
        except BaseException as exc:
            if store is not None:
                store.set_status(ScanStatus.ABORTED, f"{type(exc).__name__}: {exc}")
                missing = int((~store.line_done()).sum())
                log.error("scan aborted with %d lines not acquired; resume it with --resume", missing)
            raise
        finally:
            progress.close()

    if on_complete is not None and not reference:
        on_complete(output)
    return output
