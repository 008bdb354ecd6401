"""Exceptions raised by ``knowledge.kernels``.

Every bad argument raises a subclass of :class:`KernelInputError` (itself a ``ValueError``), whose
message names the argument and what was wrong with it; the argument's name is also kept in the
``param`` attribute. Asking for the GPU path where it cannot run raises :class:`GpuUnavailableError`.
All of them live in this one module so they can be re-parented under the project's root exception.
"""

from __future__ import annotations


class KernelError(Exception):
    """Root of every error raised by ``knowledge.kernels``."""


class KernelInputError(KernelError, ValueError):
    """An argument of a kernel call is invalid; ``param`` names the argument."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


class UnknownMetricError(KernelInputError):
    """``metric`` is not one of the supported metrics."""


class InvalidKError(KernelInputError):
    """``k`` is not an integer in ``[1, MAX_K]``."""


class ShapeError(KernelInputError):
    """An array has the wrong number of dimensions or a mismatched dimension."""


class DTypeError(KernelInputError):
    """An array has an unsupported element type."""


class NonFiniteInputError(KernelInputError):
    """The queries contain NaN or infinity."""


class MaskError(KernelInputError):
    """``mask`` is not a boolean vector with one entry per base row."""


class InvalidDeviceError(KernelInputError):
    """``device`` is not one of ``"auto"``, ``"cpu"``, ``"gpu"``."""


class GpuUnavailableError(KernelError, RuntimeError):
    """``device="gpu"`` was requested but the GPU path cannot run here; the message says why."""
