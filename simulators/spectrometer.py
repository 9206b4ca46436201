"""The simulated spectrometer: fluoscan's real Andor driver on the stand-in SDK, looking at the mouse phantom.

:func:`open_simulated_spectrometer` installs the stand-in Andor libraries (:mod:`.andor_sdk`), connects
the camera's scene to the phantom (:mod:`.phantom`), and returns :class:`SimulatedAndorSpectrometer`:
the shipped :class:`~fluoscan.drivers.andor.AndorSpectrometer` plus :meth:`~SimulatedAndorSpectrometer.ground_truth`.
At every frame the scene reads the stage position and the laser's emission state and power, as a real
camera would see them: laser off gives a dark frame.

Along the slit, detector row r (counted from the top) images the animal at
``x = (r + 0.5 - height / 2) * point_pitch_mm / track_height_px`` mm, so the points are
``point_pitch_mm`` apart (0.5 mm when the configuration gives no pitch) and the mouse is centred on the slit.

:func:`stub_device_context` builds a :class:`~fluoscan.acquisition.devices.DeviceContext` with a
:class:`StubLaser` and a :class:`StubStage`, for trying the spectrometer without the laser and stage simulators.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import numpy as np

from fluoscan.acquisition.config import FluoscanConfig
from fluoscan.acquisition.devices import DeviceContext
from fluoscan.drivers.andor import AndorSpectrometer, ReadoutGeometry
from fluoscan.simulators.andor_sdk import Exposure, NoiseModel, SceneFrame, SimulatedSDK2, SimulatedShamrock, install_standin
from fluoscan.simulators.faults import Fault, FaultPlan
from fluoscan.simulators.phantom import MousePhantom

log = logging.getLogger(__name__)

DEFAULT_POINT_PITCH_MM = 0.5


def slit_positions_mm(detector_height_px: int, track_height_px: int, point_pitch_mm: float | None) -> np.ndarray:
    """Return the position along the slit, in mm, that each detector row (from the top) images."""
    pitch = point_pitch_mm if point_pitch_mm is not None else DEFAULT_POINT_PITCH_MM
    return (np.arange(detector_height_px) + 0.5 - detector_height_px / 2) * pitch / track_height_px


def fault_plan(faults: FaultPlan | Iterable[Fault] | None) -> FaultPlan | None:
    """Accept a FaultPlan, a list of Fault, or None (the ``spectrometer_faults`` device option)."""
    if faults is None or isinstance(faults, FaultPlan):
        return faults
    return FaultPlan(list(faults))


class PhantomScene:
    """The camera's scene: the phantom under the laser, at the stage's current position."""

    def __init__(self, phantom: MousePhantom, context: DeviceContext) -> None:
        self.phantom = phantom
        self.context = context
        self.point_pitch_mm = context.config.spectrometer.point_pitch_mm
        # Set once the driver has opened; until then the whole detector height is one track.
        self.geometry: ReadoutGeometry | None = None
        self._dark_frames = 0
        self._lock = threading.Lock()

    def x_rows_mm(self, detector_height_px: int) -> np.ndarray:
        track_height = self.geometry.track_height_px if self.geometry is not None else detector_height_px
        return slit_positions_mm(detector_height_px, track_height, self.point_pitch_mm)

    def __call__(self, exposure: Exposure) -> SceneFrame:
        laser, stage = self.context.laser, self.context.stage
        if laser is None or not laser.emission():
            with self._lock:
                number, self._dark_frames = self._dark_frames, self._dark_frames + 1
            return SceneFrame(photoelectrons=None, rng=self.phantom.dark_rng(number))

        y_mm = stage.position_mm() if stage is not None else self.phantom.y_start_mm
        line = self.phantom.line_index(y_mm)
        height, _ = exposure.detector_shape
        photoelectrons = self.phantom.expected_photoelectrons(
            line, self.x_rows_mm(height), exposure.wavelengths_nm, exposure.exposure_s, laser.power_mw()
        )
        return SceneFrame(photoelectrons=photoelectrons, rng=self.phantom.line_rng(line))


class SimulatedAndorSpectrometer(AndorSpectrometer):
    """The Andor driver on the stand-in SDK, which also returns the ground truth of the phantom behind its frames."""

    def __init__(self, config: Any, *, scene: PhantomScene, sdk: SimulatedSDK2, laser_power_mw: float, **kwargs: Any) -> None:
        self.scene = scene
        self.sdk = sdk
        self._truth_power_mw = laser_power_mw
        super().__init__(config, **kwargs)
        scene.geometry = self.readout_geometry

    @property
    def phantom(self) -> MousePhantom:
        return self.scene.phantom

    def ground_truth(self, positions_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Return abundance (y, x, component), spectra (component, wavelength) and component names.

        The truth holds for the current exposure and the configured laser power (``laser.power_mw``);
        see :meth:`MousePhantom.ground_truth` for the units.
        """
        geometry = self.readout_geometry
        return self.phantom.ground_truth(
            positions_mm,
            x_rows_mm=self.scene.x_rows_mm(geometry.detector_height_px),
            track_rows=geometry.track_rows_px(),
            detector_wavelengths_nm=self.sdk.spectrograph.physical_wavelengths_nm(
                geometry.detector_width_px, self.sdk.detector.pixel_size_um
            ),
            columns=geometry.columns(),
            exposure_s=self.exposure_s,
            power_mw=self._truth_power_mw,
        )


def open_simulated_spectrometer(context: DeviceContext) -> SimulatedAndorSpectrometer:
    """Open the simulated spectrometer (entry point ``fluoscan.spectrometers:simulated``).

    The stand-in libraries stay installed until ``context.stack`` closes. Faults come from
    ``context.options["spectrometer_faults"]`` (a FaultPlan or a list of Fault).
    """
    config = context.config
    simulation = config.simulation
    faults = fault_plan(context.options.get("spectrometer_faults"))
    phantom = MousePhantom(simulation.phantom, seed=simulation.seed, y_start_mm=config.scan.y_start_mm, step_mm=config.scan.step_mm)
    scene = PhantomScene(phantom, context)
    shamrock = SimulatedShamrock(faults=faults)
    sdk = SimulatedSDK2(
        scene,
        noise=NoiseModel.from_phantom(simulation.phantom),
        time_scale=simulation.time_scale,
        readout_s=simulation.readout_s,
        spectrograph=shamrock,
        faults=faults,
        seed=simulation.seed,
    )
    context.stack.enter_context(install_standin(sdk, shamrock))
    return SimulatedAndorSpectrometer(
        config.spectrometer, scene=scene, sdk=sdk, laser_power_mw=config.laser.power_mw, exposure_s=config.scan.exposure_s
    )


# ---------------------------------------------------------------------------------------------
# Stub laser and stage


class _Stub:
    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class StubLaser(_Stub):
    """A laser that applies every request instantly: the Laser Protocol with no transport."""

    def __init__(self, power_mw: float = 40.0, wavelength_nm: float = 690.0) -> None:
        self._power_mw = power_mw
        self._wavelength_nm = wavelength_nm
        self._emission = False
        self.closed = False

    def identity(self) -> str:
        return "stub laser"

    def wavelength_nm(self) -> float:
        return self._wavelength_nm

    def power_limits_mw(self) -> tuple[float, float]:
        return 0.0, 100.0

    def set_power_mw(self, power_mw: float) -> None:
        self._power_mw = power_mw

    def power_setpoint_mw(self) -> float:
        return self._power_mw

    def power_mw(self) -> float:
        return self._power_mw if self._emission else 0.0

    def set_emission(self, on: bool) -> None:
        self._emission = bool(on)

    def emission(self) -> bool:
        return self._emission

    def interlock_closed(self) -> bool:
        return True


class StubStage(_Stub):
    """A stage that moves instantly and reads back exactly where it was sent."""

    def __init__(self, position_mm: float = 0.0, limits_mm: tuple[float, float] = (0.0, 150.0)) -> None:
        self._position_mm = position_mm
        self._limits_mm = limits_mm
        self.closed = False

    def identity(self) -> str:
        return "stub stage"

    def is_homed(self) -> bool:
        return True

    def home(self) -> None:
        self._position_mm = 0.0

    def limits_mm(self) -> tuple[float, float]:
        return self._limits_mm

    def move_to(self, position_mm: float) -> float:
        self._position_mm = float(position_mm)
        return self._position_mm

    def position_mm(self) -> float:
        return self._position_mm

    def stop(self) -> None:
        pass


def stub_device_context(config: FluoscanConfig | None = None, **options: Any) -> DeviceContext:
    """Return a DeviceContext with a :class:`StubLaser` at the configured power and a :class:`StubStage` at the first line.

    Keyword arguments become ``context.options`` (for example ``spectrometer_faults=[...]``). Close
    ``context.stack`` when done.
    """
    config = config or FluoscanConfig()
    context = DeviceContext(config=config, options=dict(options))
    context.laser = StubLaser(power_mw=config.laser.power_mw, wavelength_nm=config.laser.wavelength_nm)
    context.stage = StubStage(position_mm=config.scan.y_start_mm)
    return context
