"""The service's web page: static files shipped in the package (no build step, nothing from another origin)."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
