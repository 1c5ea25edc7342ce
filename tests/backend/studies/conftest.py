"""Study test helpers (the fixtures live in tests/backend/conftest.py)."""

from tests.backend.conftest import jpeg_bytes, png_bytes

__all__ = ["jpeg_bytes", "png_bytes"]
