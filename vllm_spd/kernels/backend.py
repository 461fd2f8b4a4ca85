"""Choose between the Triton kernel and the torch reference of an op.

Triton is used only for CUDA tensors, only when ``triton`` is importable, and never
when ``VLLM_SPD_KERNELS=torch`` (the switch for debugging a suspected kernel bug:
the torch reference is the oracle).  CPU tensors always take the torch reference,
which is also the plugin's CPU path.  The Triton modules are imported lazily, so
importing ``vllm_spd.kernels`` on a CPU machine never imports triton (the tests rely
on that to decide whether they can switch triton to its interpreter).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

#: "auto" (default): Triton on CUDA when available; "torch": always the reference;
#: "triton": Triton even for CPU tensors (only works under TRITON_INTERPRET=1).
ENV_BACKEND = "VLLM_SPD_KERNELS"
BACKENDS = ("auto", "torch", "triton")


@functools.cache
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(tensor: torch.Tensor, backend: str | None = None) -> str:
    """Return "triton" or "torch" for an op whose main input is ``tensor``.

    ``backend`` (an argument) wins over the environment variable.

    >>> resolve_backend(torch.zeros(1), "auto")
    'torch'
    """
    choice = backend or os.environ.get(ENV_BACKEND, "auto") or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"{ENV_BACKEND}/backend must be one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        return "triton" if tensor.is_cuda and triton_importable() else "torch"
    return choice


class FusedKernel:
    """A fused kernel that falls back to its op's torch reference when it fails to build:
    then warned once and not tried again in this process."""

    def __init__(self, what: str):
        self.what = what
        self.failed: str | None = None

    def wanted(self, tensor: torch.Tensor) -> bool:
        """Whether to launch it for an op on ``tensor`` (see :func:`resolve_backend`)."""
        return self.failed is None and resolve_backend(tensor) == "triton"

    def run(self, launch) -> bool:
        """``launch()``; False when the kernel failed (the caller runs the torch path).
        A failure during CUDA-graph capture is raised: the capture is broken anyway."""
        try:
            launch()
            return True
        except Exception as err:
            if torch.cuda.is_current_stream_capturing():
                raise
            self.failed = repr(err)
            logging.getLogger("vllm_spd").warning("spd: the fused %s kernel failed (%s); it runs as torch ops",
                                                  self.what, err)
            return False
