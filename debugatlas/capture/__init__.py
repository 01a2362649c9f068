"""Capture: sampled activation vectors of one layer (`ActivationSet`), recorded by a forward hook."""
from .activations import ActivationSet
from .recorder import DISK_THRESHOLD_BYTES, SAMPLING, ActivationRecorder, image_picks
from .run import capture
from .shards import merge_shards
from .spec import CaptureSpec
from .store import DiskVectors

__all__ = ["DISK_THRESHOLD_BYTES", "SAMPLING", "ActivationRecorder", "ActivationSet", "CaptureSpec", "DiskVectors",
           "capture", "image_picks", "merge_shards"]
