"""Writing results safely: atomic writes (a file is the old one or the complete new one, never half of either)."""

from jaxsnn._src.files import atomic_write, write_json

__all__ = ["atomic_write", "write_json"]
