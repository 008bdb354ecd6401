"""Similarity kernels (installed as ``knowledge.kernels``).

``topk(queries, base, k, metric, mask, device=...)`` returns exact top-k (scores, ids) from a numpy
CPU path or a CuPy GPU path that give the same answers; ``gpu_available()`` says whether the GPU
path can run and why not. CuPy is optional: nothing here imports it until the GPU path is used.

Status: the GPU path has not yet run on a GPU and is unverified (bench/gpu_check.py checks it; see
bench/RESULTS.md). Its CUDA source compiles to PTX in the tests; the CPU path is tested.
"""

from .detect import gpu_available
from .errors import (
    DTypeError,
    GpuUnavailableError,
    InvalidDeviceError,
    InvalidKError,
    KernelError,
    KernelInputError,
    MaskError,
    NonFiniteInputError,
    ShapeError,
    UnknownMetricError,
)
from .keys import METRICS
from .topk import topk
from .validate import MAX_K

__all__ = [
    "MAX_K",
    "METRICS",
    "DTypeError",
    "GpuUnavailableError",
    "InvalidDeviceError",
    "InvalidKError",
    "KernelError",
    "KernelInputError",
    "MaskError",
    "NonFiniteInputError",
    "ShapeError",
    "UnknownMetricError",
    "gpu_available",
    "topk",
]
