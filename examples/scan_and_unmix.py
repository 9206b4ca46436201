"""Run a full simulated mouse scan from Python and unmix it as soon as the cube is complete.

    python examples/scan_and_unmix.py [OUTPUT.zarr]

The same call drives real hardware: load config/lab.toml (filled in) instead of the demo.
"""

import logging
import sys
from pathlib import Path

import numpy as np
import zarr

from fluoscan.acquisition import run_scan
from fluoscan.acquisition.config import load_config
from fluoscan.config import shipped_config
from fluoscan.unmixing import unmix_store

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

output = Path(sys.argv[1] if len(sys.argv) > 1 else "example-mouse.zarr")
config = load_config(shipped_config("simulated-mouse"))
run_scan(config, output, overwrite=True, on_complete=unmix_store)

unmixing = zarr.open_group(output / "unmixing", mode="r")
abundance = np.asarray(unmixing["abundance"][:])
for index, name in enumerate(unmixing.attrs["components"]):
    weights = abundance[..., index]
    print(f"{name:18s} max weight {weights.max():10.1f}, nonzero pixels {np.count_nonzero(weights):6d} of {weights.size}")
