"""The HTTP service: FastAPI app (`create_app`), schemas, metrics, settings, and the `engine-serve` entry point."""

from server.app import create_app
from server.settings import Settings

__all__ = ["Settings", "create_app"]
