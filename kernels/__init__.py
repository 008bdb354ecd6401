"""Similarity kernels (installed as ``knowledge.kernels``).

``topk(queries, base, k, metric, mask, device=...)`` returns exact top-k (scores, ids) from a numpy
CPU path or a CuPy GPU path that give the same answers; ``gpu_available()`` says whether the GPU
path can run and why not. CuPy is optional: nothing here imports it until the GPU path is used.

Status: the GPU path was verified on an NVIDIA H200 (bench/gpu_check.py, and the GPU tests; see
bench/RESULTS.md). Where no GPU is present, the tests compile its CUDA source to PTX and test the CPU path.
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
