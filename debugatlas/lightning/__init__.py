"""The Lightning adapters: `AtlasCallback` and a small `ClassifierModule`; the only package importing Lightning."""
from .callback import AtlasCallback
from .classifier import ClassifierModule

__all__ = ["AtlasCallback", "ClassifierModule"]
