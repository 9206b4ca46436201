"""Scan configuration, the store format, the line writer and the scan procedure.

Imports the drivers and nothing above them: unmixing after a scan is a hook given to
:func:`run_scan` (``on_complete=fluoscan.unmixing.unmix_store``).
"""

from fluoscan.acquisition.config import ConfigError, FluoscanConfig, load_config
from fluoscan.acquisition.scan import ScanAborted, run_scan
from fluoscan.acquisition.store import ScanStatus, ScanStore, StoreError

__all__ = [
    "ConfigError",
    "FluoscanConfig",
    "ScanAborted",
    "ScanStatus",
    "ScanStore",
    "StoreError",
    "load_config",
    "run_scan",
]
