"""What every stage shares: the error type, model access, dataset reading, progress callbacks."""
from .datasets import iterate_dataset, load_images
from .errors import DebugAtlasError
from .model import (
    Normalized, as_logits, generator, gradient_context, layer_name, model_device, on_device, output_tensor,
    preserved_model_state, resolve_layer, run_to_layer,
)

__all__ = ["DebugAtlasError", "Normalized", "as_logits", "generator", "gradient_context", "iterate_dataset",
           "layer_name", "load_images", "model_device", "on_device", "output_tensor", "preserved_model_state",
           "resolve_layer", "run_to_layer"]
