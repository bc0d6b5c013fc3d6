"""napari-imedsam: interactive medical image segmentation with I-MedSAM, in napari and from Python.

The public API (imported on first use, so `import napari_imedsam` stays light and napari's plugin
discovery loads no model code)::

    from napari_imedsam import AnnotationSession, Predictor, load_model, CT_PRESETS
    predictor = Predictor(load_model())            # the default model
    result = predictor.predict(slice_2d, box_xyxy=(x0, y0, x1, y1), window=CT_PRESETS["soft tissue"])
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-imedsam")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+unknown"

_API = {
    "evaluation": "napari_imedsam",
    "load_model": "napari_imedsam.model.registry",
    "LoadedModel": "napari_imedsam.model.registry",
    "default_model": "napari_imedsam.model.catalog",
    "Predictor": "napari_imedsam.inference.predictor",
    "Prediction": "napari_imedsam.inference.predictor",
    "AnnotationSession": "napari_imedsam.inference.session",
    "propagate": "napari_imedsam.inference.propagation",
    "review_scores": "napari_imedsam.inference.review",
    "IntensityWindow": "napari_imedsam.inference.windows",
    "CT_PRESETS": "napari_imedsam.inference.windows",
    "MR_PERCENTILES": "napari_imedsam.inference.windows",
    "InputError": "napari_imedsam.errors",
    "CheckpointError": "napari_imedsam.errors",
    "load_sample": "napari_imedsam._sample_data",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name == "evaluation":  # a module: metrics, next_click, evaluate
        return import_module("napari_imedsam.evaluation")
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_imedsam' has no attribute {name!r}")
