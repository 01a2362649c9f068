"""Every file format of a run directory and every path in it, in one place; atomic writes."""
from .atomic import staged_dir, write_bytes, write_text

__all__ = ["staged_dir", "write_bytes", "write_text"]
