"""GPU detection: can the CuPy path run in this process?"""

from __future__ import annotations

import functools
import logging

import numpy as np

from . import gpu

logger = logging.getLogger("knowledge.kernels")

_PROBE = r"""
extern "C" __global__ void knowledge_probe(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] * 2.0f + 1.0f;
}
"""


def _probe() -> str:
    """Run every check; returns a description of the device, raises with the reason on failure."""
    try:
        cp = gpu.import_cupy()
    except Exception as exc:  # ImportError, or a broken CUDA install raising on import
        raise RuntimeError(f"cupy is not importable ({type(exc).__name__}: {exc})") from exc
    if not cp.cuda.is_available():
        raise RuntimeError("cupy.cuda.is_available() is False (no usable CUDA device or driver)")
    device = cp.cuda.Device()
    capability = int(device.compute_capability)
    if capability < gpu.MIN_COMPUTE_CAPABILITY:
        raise RuntimeError(f"compute capability {capability} < required {gpu.MIN_COMPUTE_CAPABILITY}")
    x = cp.arange(64, dtype=np.float32)
    y = cp.empty_like(x)
    cp.RawKernel(_PROBE, "knowledge_probe")((1,), (64,), (x, y, np.int32(64)))
    if not bool((y == x * 2 + 1).all()):
        raise RuntimeError("the probe kernel ran but returned wrong values")
    gpu.kernels(device.id)  # compile topk.cu now, so a compile error disables the GPU path
    name = cp.cuda.runtime.getDeviceProperties(device.id)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return f"{name} (device {device.id}, compute capability {capability}, CuPy {cp.__version__})"


@functools.lru_cache(maxsize=1)
def gpu_available() -> tuple[bool, str]:
    """(True, device description) when the CuPy path can run, else (False, reason).

    Checks, in order: cupy imports, ``cupy.cuda.is_available()``, compute capability >= 7.0, a tiny
    kernel runs and returns the right values, and the package's CUDA source compiles. The result is
    computed once per process (``gpu_available.cache_clear()`` re-probes) and logged once on the
    ``knowledge.kernels`` logger: INFO with the reason when the CPU path will be used. Never raises.
    """
    try:
        description = _probe()
    except Exception as exc:
        reason = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"
        logger.info("GPU path unavailable, using the CPU path: %s", reason)
        return False, reason
    logger.info("GPU path available: %s", description)
    return True, description
