"""fluoscan: spectrally resolved NIR fluorescence scanning and sparse NMF unmixing."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fluoscan")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

