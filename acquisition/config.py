"""Scan configuration: pydantic models read from a TOML file.

Every key carries its unit in its name. Models reject unknown keys, so that a misspelt key is an
error instead of a silently ignored setting. :func:`load_config` turns validation errors into one
:class:`ConfigError` whose message names each key, the value given and the allowed range.
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo


class ConfigError(ValueError):
    """A configuration file is missing, unreadable, or has invalid values."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScanConfig(_Section):
    """The raster: where the stage goes, how long each line is exposed, and what is recorded first."""

    name: str = Field("scan", description="Free-text name stored with the data.")
    y_start_mm: float = Field(0.0, description="Stage position of the first line, in mm.")
    step_mm: float = Field(
        0.5, gt=0, le=100, description="Stage step between lines, in mm (positive: the stage moves forward)."
    )
    n_lines: int = Field(100, ge=1, le=1_000_000, description="Number of lines (stage steps), Ny.")
    exposure_s: float = Field(0.05, gt=0, le=600, description="Camera exposure per line, in s.")
    dark_frames: int = Field(
        4, ge=0, le=1000, description="Frames averaged into the dark frame, taken with the laser off before the scan."
    )
    writer_queue_lines: int = Field(
        16, ge=1, le=10_000, description="Lines that may wait for the disk writer before the camera waits."
    )

    def positions_mm(self) -> list[float]:
        """Return the stage position of every line, in mm."""
        return [self.y_start_mm + i * self.step_mm for i in range(self.n_lines)]

    @property
    def y_stop_mm(self) -> float:
        return self.y_start_mm + (self.n_lines - 1) * self.step_mm


class LaserConfig(_Section):
    """The excitation laser. ``driver = "simulated"`` serves a simulated laser and drives it with the OBIS driver."""

    driver: str = Field("simulated", description='Driver name: "obis" (Coherent OBIS SCPI over VISA) or "simulated".')
    resource: str | None = Field(
        None,
        description='VISA resource, e.g. "ASRL/dev/ttyACM0::INSTR" or "TCPIP::127.0.0.1::5000::SOCKET". '
        "Ignored by the simulated driver.",
    )
    baud_rate: int = Field(115200, gt=0, description="Serial baud rate (serial resources only).")
    timeout_s: float = Field(2.0, gt=0, le=60, description="Time allowed for each reply, in s.")
    wavelength_nm: float = Field(690.0, ge=300, le=1600, description="Wavelength the laser must report, in nm.")
    wavelength_tolerance_nm: float = Field(
        5.0, ge=0, le=100, description="Largest accepted difference between reported and configured wavelength, in nm."
    )
    power_mw: float = Field(40.0, gt=0, le=10_000, description="Output power during the scan, in mW.")
    emission_timeout_s: float = Field(
        10.0, gt=0, le=120, description="Time allowed for emission to switch on, including a CDRH delay, in s."
    )


class HomingPolicy(str, Enum):
    """Policy for a stage that has no reference position (is not homed)."""

    HOME = "home"
    REQUIRE = "require"


class StageConfig(_Section):
    """The translation stage that steps the animal through the laser line."""

    driver: str = Field("simulated", description='Driver name: "zaber" (Zaber ASCII over serial) or "simulated".')
    port: str | None = Field(None, description='Serial port, e.g. "/dev/ttyUSB0" or "COM3". Ignored by the simulated driver.')
    baud_rate: int = Field(115200, gt=0, description="Serial baud rate.")
    device_address: int = Field(1, ge=1, le=99, description="Zaber device address on the daisy chain.")
    axis: int = Field(1, ge=1, le=9, description="Axis number on the device.")
    microstep_mm: float = Field(
        0.000047625, gt=0, le=1, description="Length of one microstep, in mm (from the stage's data sheet)."
    )
    limits_mm: tuple[float, float] | None = Field(
        None, description="Soft travel limits [min, max] in mm; the scan must stay inside them. None uses the device's limits."
    )
    homing: HomingPolicy = Field(
        HomingPolicy.HOME, description='"home": home an unreferenced stage before scanning; "require": stop with an error instead.'
    )
    timeout_s: float = Field(2.0, gt=0, le=60, description="Time allowed for each reply, in s.")
    move_timeout_s: float = Field(60.0, gt=0, le=3600, description="Time allowed for one move or homing, in s.")
    settle_s: float = Field(0.0, ge=0, le=60, description="Wait after each move before exposing, in s.")
    checksums: bool = Field(False, description="Append and check Zaber message checksums.")

    @model_validator(mode="after")
    def _check_limits(self) -> StageConfig:
        if self.limits_mm is not None and not self.limits_mm[0] < self.limits_mm[1]:
            raise ValueError(f"limits_mm must be [min, max] with min < max, got {list(self.limits_mm)}")
        return self


class SpectrometerConfig(_Section):
    """The Andor camera and spectrograph that record one (points, wavelengths) frame per line."""

    driver: str = Field(
        "simulated",
        description='Driver name: "andor" (pylablib Andor SDK2 camera and Shamrock spectrograph), '
        '"simulated" (the same driver on a simulated SDK and phantom) or "replay" (frames of a recorded store).',
    )
    camera_index: int = Field(0, ge=0, description="Andor camera index.")
    spectrograph_index: int = Field(0, ge=0, description="Shamrock spectrograph index.")
    n_points: int = Field(64, ge=1, le=4096, description="Points along the slit, Nx: the number of camera tracks.")
    track_height_px: int | None = Field(
        None, ge=1, description="Detector rows summed into each track; None splits the detector height evenly."
    )
    point_pitch_mm: float | None = Field(
        0.5, gt=0, description="Distance between neighbouring points on the animal, in mm; None records x as a point index."
    )
    center_wavelength_nm: float = Field(800.0, ge=200, le=2000, description="Spectrograph centre wavelength, in nm.")
    grating: int | None = Field(None, ge=1, description="Spectrograph grating (1-based); None keeps the current one.")
    wavelength_range_nm: tuple[float, float] | None = Field(
        None, description="Keep only detector columns inside [min, max] nm; None keeps the whole detector."
    )
    horizontal_binning: int = Field(1, ge=1, le=64, description="Detector columns summed into one wavelength bin.")
    temperature_c: float | None = Field(-60.0, ge=-120, le=30, description="Cooler setpoint in °C; None leaves the cooler off.")
    temperature_timeout_s: float = Field(
        600.0, ge=0, le=7200, description="Time allowed for the sensor to reach a stable temperature, in s."
    )
    frame_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Time allowed for one frame beyond its exposure, in s."
    )
    replay_store: Path | None = Field(None, description='Store whose frames the "replay" driver plays back.')

    @model_validator(mode="after")
    def _check_range(self) -> SpectrometerConfig:
        if self.wavelength_range_nm is not None and not self.wavelength_range_nm[0] < self.wavelength_range_nm[1]:
            raise ValueError(
                f"wavelength_range_nm must be [min, max] with min < max, got {list(self.wavelength_range_nm)}"
            )
        if self.driver == "replay" and self.replay_store is None:
            raise ValueError('driver "replay" needs replay_store, the path of the store to play back')
        return self


class PhantomConfig(_Section):
    """The simulated mouse: body, two capillary tubes under the skin, and the detector that images it."""

    markers: tuple[str, ...] = Field(
        ("icg_lnp", "af750"),
        description='Marker tubes present: any of "icg_lnp", "af750"; () records a reference animal without markers.',
    )
    tube_depth_mm: float = Field(
        1.0, ge=0, le=20, description="Depth of the tubes under the skin, in mm (sets their blur and tissue attenuation)."
    )
    marker_brightness: float = Field(
        1.0, gt=0, le=1000, description="Scale of the markers' emission relative to the default phantom."
    )
    autofluorescence_brightness: float = Field(
        1.0, ge=0, le=1000, description="Scale of the tissue autofluorescence (skin and gut) relative to the default phantom."
    )
    chlorophyll_brightness: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="Scale of the gut's chlorophyll autofluorescence (from plant-based rodent food) relative to the "
        "default phantom; 0 models a purified diet.",
    )
    gut_depth_mm: float = Field(
        2.0, ge=0, le=20, description="Depth of the gut contents under the skin, in mm (sets their tissue attenuation)."
    )
    mu_eff_700nm_per_mm: float = Field(
        0.45,
        ge=0,
        le=10,
        description="Effective attenuation coefficient of the tissue at 700 nm, per mm; light from depth d is "
        "attenuated by exp(-mu_eff * d). 0 with mu_eff_900nm_per_mm = 0 turns the tissue optics off.",
    )
    mu_eff_900nm_per_mm: float = Field(
        0.25, ge=0, le=10, description="Effective attenuation coefficient of the tissue at 900 nm, per mm (linear in between)."
    )
    photons_per_mw_s: float = Field(
        2.0e4, gt=0, description="Detected photoelectrons per detector pixel per mW of laser per s at full abundance."
    )
    offset_counts: float = Field(500.0, ge=0, le=60000, description="Detector bias, in counts.")
    read_noise_e: float = Field(6.0, ge=0, le=1000, description="Read noise per pixel, in electrons.")
    dark_current_e_s: float = Field(0.5, ge=0, description="Dark current per pixel, in electrons per s.")
    gain_e_per_count: float = Field(2.0, gt=0, le=100, description="Electrons per count.")
    saturation_counts: int = Field(65535, ge=1, le=65535, description="Largest count the 16-bit converter returns.")


class SimulationConfig(_Section):
    """Settings of the simulated devices; ignored by real hardware."""

    seed: int = Field(0, ge=0, description="Seed of the phantom's noise: the same seed gives the same cube.")
    time_scale: float = Field(
        0.0, ge=0, le=10, description="Simulated device timing relative to real time: 0 is instant, 1 is real time."
    )
    stage_velocity_mm_s: float = Field(20.0, gt=0, description="Simulated stage top speed, in mm/s.")
    stage_acceleration_mm_s2: float = Field(200.0, gt=0, description="Simulated stage acceleration, in mm/s².")
    readout_s: float = Field(0.01, ge=0, description="Simulated camera readout time per frame, in s.")
    phantom: PhantomConfig = Field(default_factory=PhantomConfig)


class ComponentConfig(_Section):
    """One source to unmix: its name, its sparsity target and where its initial spectrum comes from."""

    name: str = Field(description="Component name, e.g. autofluorescence, icg_lnp, af750.")
    sparsity: float | str | None = Field(
        None,
        description='Hoyer sparsity target in [0, 1] for the weight map; "auto" to keep the weights above the '
        "map's background (its median + 3 robust standard deviations); or None for no constraint.",
    )
    spectrum: str = Field(
        "mean",
        description='Initial spectrum: "mean" (the data\'s mean spectrum), "auto" (a pixel spectrum picked from the data), '
        '"library:NAME" (a built-in dye spectrum), "reference" (the store\'s reference acquisition) '
        "or a path to a .npy/.csv file of (wavelength_nm, value) rows.",
    )
    fixed: bool = Field(False, description="Hold the spectrum fixed at its initial value during the fit.")

    @model_validator(mode="after")
    def _check_sparsity(self) -> ComponentConfig:
        s = self.sparsity
        if isinstance(s, str) and s != "auto":
            raise ValueError(f'sparsity must be a number in [0, 1], "auto" or omitted, got {s!r}')
        if isinstance(s, float) and not 0.0 <= s <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {s}")
        return self


def _default_components() -> tuple[ComponentConfig, ...]:
    return (
        ComponentConfig(name="autofluorescence", sparsity=None, spectrum="library:autofluorescence"),
        ComponentConfig(name="icg_lnp", sparsity=0.9, spectrum="library:icg_lnp"),
        ComponentConfig(name="af750", sparsity=0.9, spectrum="library:af750"),
    )


class AbundanceStart(str, Enum):
    """Starting values of the weights A in the unmixing."""

    CONSTANT = "constant"
    LSTSQ = "lstsq"


class SiteBackgroundMethod(str, Enum):
    """Method that estimates the autofluorescence under each marker site after the fit."""

    FIT = "fit"
    INTERPOLATE = "interpolate"


class UnmixingConfig(_Section):
    """Settings of the unmixing of a finished cube."""

    components: tuple[ComponentConfig, ...] = Field(default_factory=_default_components)
    max_iter: int = Field(500, ge=1, le=1_000_000, description="Iteration cap.")
    tol: float = Field(1e-5, ge=0, le=1, description="Stop when the relative decrease of the loss falls below this.")
    loss: str = Field("frobenius", description='"frobenius" or "kullback-leibler".')
    random_state: int | None = Field(0, description="Seed for any random initialisation.")
    abundance_start: AbundanceStart = Field(
        AbundanceStart.CONSTANT,
        description='Initial weights: "constant" (one positive constant for every pixel, the published method) or '
        '"lstsq" (the least-squares weights for the initial spectra; better when those come from the data).',
    )
    site_background: SiteBackgroundMethod = Field(
        SiteBackgroundMethod.FIT,
        description='Autofluorescence under the markers: "fit" (as the NMF fit gives it, the published method) or '
        '"interpolate" (from a smooth surface fitted to the tissue around each marker site, then the marker '
        "weights refitted; needs the Frobenius loss and the in-memory backend).",
    )

    @model_validator(mode="after")
    def _check_components(self) -> UnmixingConfig:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique, got {names}")
        if not names:
            raise ValueError("at least one component is needed")
        if self.loss not in ("frobenius", "kullback-leibler"):
            raise ValueError(f'loss must be "frobenius" or "kullback-leibler", got {self.loss!r}')
        return self


class FluoscanConfig(_Section):
    """A whole scan: the raster, the three devices, the simulation and the unmixing."""

    scan: ScanConfig = Field(default_factory=ScanConfig)
    laser: LaserConfig = Field(default_factory=LaserConfig)
    stage: StageConfig = Field(default_factory=StageConfig)
    spectrometer: SpectrometerConfig = Field(default_factory=SpectrometerConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    unmixing: UnmixingConfig = Field(default_factory=UnmixingConfig)

    @model_validator(mode="after")
    def _check_raster_in_limits(self) -> FluoscanConfig:
        limits = self.stage.limits_mm
        if limits is not None:
            low, high = sorted((self.scan.y_start_mm, self.scan.y_stop_mm))
            if low < limits[0] or high > limits[1]:
                raise ValueError(
                    f"scan positions {low:g}..{high:g} mm leave stage.limits_mm {list(limits)}: "
                    "change scan.y_start_mm, scan.step_mm or scan.n_lines"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as plain JSON-compatible values (for store attributes)."""
        return self.model_dump(mode="json")


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """Return the configuration model inside a field's type (``X``, ``X | None``, ``tuple[X, ...]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, tuple):
        for argument in typing.get_args(annotation):
            model = nested_model(argument)
            if model is not None:
                return model
    return None


def model_at(location: tuple[int | str, ...]) -> type[BaseModel] | None:
    """Return the configuration model at a location such as ("unmixing", "components", 0)."""
    model: type[BaseModel] | None = FluoscanConfig
    for part in location:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = nested_model(field.annotation) if field is not None else None
    return model


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def bounds_text(field: FieldInfo, name: str = "value") -> str | None:
    """Describe a field's numeric bounds in ASCII, e.g. "0 < step_mm <= 100", or None without bounds."""
    low = high = None
    for constraint in field.metadata:
        if isinstance(constraint, annotated_types.Gt):
            low = f"{_bound(constraint.gt)} <"
        elif isinstance(constraint, annotated_types.Ge):
            low = f"{_bound(constraint.ge)} <="
        elif isinstance(constraint, annotated_types.Lt):
            high = f"< {_bound(constraint.lt)}"
        elif isinstance(constraint, annotated_types.Le):
            high = f"<= {_bound(constraint.le)}"
    if low is None and high is None:
        return None
    return " ".join(part for part in (low, name, high) if part)


def _error_line(item: Any) -> str:
    location = tuple(item["loc"])
    key = ".".join(str(part) for part in location) or "(top level)"
    message = item["msg"].removeprefix("Value error, ")
    model = model_at(location[:-1])
    name = location[-1] if location else None
    if item["type"] == "extra_forbidden":
        known = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"  {key}: unknown key; {hint}docs/configuration.md lists every key"
    if item["type"] == "missing":
        return f"  {key}: missing required key"
    if isinstance(item.get("input"), dict):
        # A check across keys of a section: its message names the keys and values itself.
        return f"  {key}: {message}"
    field = model.model_fields.get(name) if model is not None and isinstance(name, str) else None
    bounds = bounds_text(field, str(name)) if field is not None else None
    allowed = f"; allowed: {bounds}" if bounds is not None else ""
    return f"  {key} = {item.get('input')!r}: {message}{allowed}"


def format_validation_error(error: ValidationError, source: str) -> str:
    """Turn a pydantic error into lines that name each key, the value given and what is allowed."""
    lines = [f"invalid configuration in {source}:"]
    lines += [_error_line(item) for item in error.errors()]
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<dict>") -> FluoscanConfig:
    """Validate a configuration given as nested dictionaries."""
    try:
        return FluoscanConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path) -> FluoscanConfig:
    """Read and validate a TOML configuration file.

    Raises
    ------
    ConfigError
        If the file is missing, is not valid TOML, or has invalid values. The message names the file,
        each offending key and value, and the allowed range.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    return parse_config(data, str(path))

