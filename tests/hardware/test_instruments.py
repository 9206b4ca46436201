"""First-connection checks against real instruments (see docs/hardware.md).

    python -m pytest tests/hardware --hardware-config my-lab.toml [--hardware-emit]

Without --hardware-config every test here is skipped. Only tests that need --hardware-emit switch
the laser on, and they switch it off again in every case.
"""

import numpy as np
import pytest

from fluoscan.acquisition.config import HomingPolicy
from fluoscan.acquisition.devices import open_devices
from fluoscan.acquisition.scan import laser_emitting

pytestmark = pytest.mark.hardware


def test_identities_are_reported(hardware_config):
    with open_devices(hardware_config) as devices:
        identities = devices.identities()
    for kind, identity in identities.items():
        assert identity.strip(), f"{kind} returned an empty identity"


def test_laser_matches_configuration(hardware_config):
    with open_devices(hardware_config) as devices:
        laser = devices.laser
        wavelength_nm = laser.wavelength_nm()
        low_mw, high_mw = laser.power_limits_mw()
        emitting = laser.emission()
    assert abs(wavelength_nm - hardware_config.laser.wavelength_nm) <= hardware_config.laser.wavelength_tolerance_nm
    assert low_mw <= hardware_config.laser.power_mw <= high_mw
    assert not emitting


def test_stage_reaches_first_and_last_line(hardware_config):
    positions = hardware_config.scan.positions_mm()
    with open_devices(hardware_config) as devices:
        stage = devices.stage
        if not stage.is_homed():
            if hardware_config.stage.homing is not HomingPolicy.HOME:
                pytest.skip('the stage is not homed and stage.homing = "require"; home it first')
            stage.home()
        tolerance_mm = 2 * hardware_config.stage.microstep_mm + 1e-6
        for target in (positions[0], positions[-1], positions[0]):
            reached = stage.move_to(target)
            assert abs(reached - target) <= tolerance_mm


def test_dark_frame_shape_and_wavelengths(hardware_config):
    with open_devices(hardware_config) as devices:
        camera = devices.spectrometer
        assert not devices.laser.emission()
        camera.set_exposure_s(hardware_config.scan.exposure_s)
        frame = camera.acquire()
        wavelengths = camera.wavelengths_nm()
    assert frame.shape == camera.frame_shape()
    assert wavelengths.shape == (frame.shape[1],)
    assert np.all(np.diff(wavelengths) > 0)


def test_emission_switches_on_and_off(hardware_config, request):
    if not request.config.getoption("--hardware-emit"):
        pytest.skip("switches the laser on: pass --hardware-emit")
    with open_devices(hardware_config) as devices:
        laser = devices.laser
        with laser_emitting(laser, hardware_config.laser.power_mw):
            assert laser.emission()
        assert not laser.emission()
