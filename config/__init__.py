"""The scan configurations shipped with fluoscan (TOML files in this package)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent


def shipped_config(name: str) -> Path:
    """Return the path of a shipped configuration, e.g. ``shipped_config("simulated-mouse")``."""
    path = CONFIG_DIR / f"{name}.toml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
        raise FileNotFoundError(f"no shipped configuration {name!r}; shipped are: {names}")
    return path
