"""Factory entry point for uvicorn: `uvicorn --factory face2paint.api.main:create_app`."""

from .app import create_app

__all__ = ["create_app"]
