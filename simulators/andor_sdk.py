"""Pure-Python stand-ins for the Andor SDK2 camera library and the Shamrock spectrograph library.

pylablib reaches the vendor DLLs through module-level objects: ``lib`` and ``libctl`` (a
``LibraryController``) in ``pylablib.devices.Andor.AndorSDK2`` and in ``...Andor.Shamrock``.
:func:`install_standin` points both modules at :class:`SimulatedSDK2` and :class:`SimulatedShamrock`,
so that pylablib's real ``AndorSDK2Camera`` and ``ShamrockSpectrograph``, and fluoscan's driver on
top of them, run unchanged. The stand-ins follow the return conventions of pylablib 1.4.5's ctypes
wrappers (``atmcd32d_lib.py``, ``ShamrockCIF_lib.py``) and signal errors as those wrappers do, by
raising ``AndorSDK2LibError(function, code)`` or ``ShamrockLibError(function, code)``.

The camera is modelled on an Andor iDus 420 (DU420A-BEX2-DD): 1024 x 255 pixels of 26 um, 16-bit,
thermoelectric cooling. The spectrograph is a 193 mm Czerny-Turner with a three-grating turret.
Pixel content comes from a *scene* callback, which returns the expected photoelectrons per detector
pixel. The camera adds dark current, shot noise, read noise, gain, offset, on-chip binning and
16-bit saturation.

Simulated time: every duration (exposure, readout, cooling) takes ``duration * time_scale`` real
seconds, and ``time_scale = 0`` makes each of them instant.

Fault injection (:class:`~fluoscan.simulators.faults.FaultPlan`): every SDK call is checked under
its function name (e.g. ``"StartAcquisition"``, ``"ShamrockSetWavelength"``) and every frame under
``"frame"``, counted from 1 per fault.

- REJECT: the call raises its library error (``DRV_ACQUISITION_ERRORS`` for acquisition calls,
  ``DRV_P1INVALID`` otherwise; ``SHAMROCK_P1INVALID``). At a frame, StartAcquisition is rejected.
- DISCONNECT: this call and every later one raise ``DRV_USBERROR`` (``SHAMROCK_COMMUNICATION_ERROR``).
- LATE: the call, or the frame, is held back ``delay_s`` real seconds.
- TIMEOUT: the frame is lost: the acquisition ends without delivering it.
- STALL: the acquisition never finishes: the camera reports ACQUIRING until aborted, no frame arrives.
- GARBLE: the frame's data comes back one row short, so it cannot be reshaped to the frame size.

TIMEOUT, STALL and GARBLE at a named call apply to the frame in progress, or the next frame when
no acquisition runs; GARBLE at ``GetImages16`` corrupts that read.

Where each part lives: the camera head, noise model and scene types in :mod:`.andor_detector`, the
shared call wrapper and fault handling in :mod:`.andor_standin`, the Shamrock stand-in in
:mod:`.shamrock`, the simulated camera in :mod:`.andor_camera` and the SDK2 functions in
:mod:`.andor_sdk2`. This module installs the stand-ins and re-exports their public names.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from pylablib.devices.Andor import AndorSDK2, Shamrock

from fluoscan.simulators.andor_camera import AcquisitionMode, ReadMode, ShutterMode, TemperatureStatus
from fluoscan.simulators.andor_detector import DetectorModel, Exposure, NoiseModel, Scene, SceneFrame
from fluoscan.simulators.andor_sdk2 import SimulatedSDK2
from fluoscan.simulators.shamrock import Grating, SimulatedShamrock, SpectrographModel

__all__ = [
    "AcquisitionMode",
    "DetectorModel",
    "Exposure",
    "Grating",
    "NoiseModel",
    "ReadMode",
    "Scene",
    "SceneFrame",
    "ShutterMode",
    "SimulatedSDK2",
    "SimulatedShamrock",
    "SpectrographModel",
    "TemperatureStatus",
    "install_standin",
]

log = logging.getLogger(__name__)

_install_lock = threading.Lock()
_installed: list[tuple[SimulatedSDK2, SimulatedShamrock | None]] = []


@contextlib.contextmanager
def install_standin(sdk: SimulatedSDK2, shamrock: SimulatedShamrock | None = None) -> Iterator[None]:
    """Point pylablib's Andor SDK2 (and, when given, Shamrock) library objects at the stand-ins.

    Each module gets a fresh ``LibraryController`` around the stand-in, marked initialised so that
    the DLL loader never runs. The original ``lib`` and ``libctl`` objects are restored on exit.
    Without ``shamrock`` the real Shamrock library object stays in place, which on Linux raises
    the OSError of a missing DLL.

    Raises
    ------
    RuntimeError
        If stand-ins are already installed: pylablib's module-level library can only point at one.
    """
    with _install_lock:
        if _installed:
            raise RuntimeError("an Andor SDK stand-in is already installed; close the other simulated spectrometer first")
        _installed.append((sdk, shamrock))
    originals = [(AndorSDK2, AndorSDK2.lib, AndorSDK2.libctl)]
    AndorSDK2.lib = sdk
    AndorSDK2.libctl = AndorSDK2.LibraryController(sdk)
    AndorSDK2.libctl.initialized = True
    if shamrock is not None:
        originals.append((Shamrock, Shamrock.lib, Shamrock.libctl))
        Shamrock.lib = shamrock
        Shamrock.libctl = Shamrock.LibraryController(shamrock)
        Shamrock.libctl.initialized = True
    log.debug("installed the Andor SDK stand-in (Shamrock: %s)", shamrock is not None)
    try:
        yield
    finally:
        for module, lib, libctl in originals:
            module.lib = lib
            module.libctl = libctl
        with _install_lock:
            _installed.clear()
        log.debug("restored pylablib's Andor libraries")
