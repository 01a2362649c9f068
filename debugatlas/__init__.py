"""debugatlas: why does an image classifier confuse class A with class B?"""
from __future__ import annotations

from ._utils import DebugAtlasError
from .capture import ActivationRecorder, ActivationSet, capture

__all__ = ["ActivationRecorder", "ActivationSet", "DebugAtlasError", "capture"]
__version__ = "0.1.0"
