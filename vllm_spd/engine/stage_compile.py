"""Stage slices compiled by Inductor, fused the way vLLM's own forward is.

The device cycle runs each stage's decoder layers itself, outside vLLM's compiled model
forward. Run eagerly, a layer launches vLLM's separate CUDA kernels for its two norms,
its q/k norms and rotary embedding, and its SiLU-and-mul. At batch 1 on an H100
(Qwen3-8B shape, 2026-12-07) those took about 15 us a layer, where vLLM's compiled decode
step spends about 7 us on the same work in Inductor's fused kernels: 0.3 ms of a 7 ms
cycle.

:class:`CompiledStages` compiles each stage's slice of layers with ``torch.compile`` as
vLLM compiles its forward: the layers' custom ops in their native torch form and
vLLM's IR ops (RMSNorm) traced into their native implementation (:func:`native_ops`),
so that Inductor fuses them; attention stays vLLM's opaque op, which reads the forward
context when it runs. The eager paths (prefill, the host-driven cycle) keep vLLM's CUDA
kernels (``plugin.fused_kernels_on``).

The compiled code runs only while the cycle's CUDA graphs are captured (a warm-up call
and the capture), inside :func:`native_ops` both times, so its guards always hold; the
replays run no Python. One function per (stage slice, anchors kept, first stage or
not); the batch dimension is dynamic, except batch 1, which compiles its own.
"""

from __future__ import annotations

import contextlib

import torch

#: Compiled functions share one code object, so dynamo's recompile limit counts them all:
#: n stages, each also at batch 1, with and without a residual.
RECOMPILE_LIMIT = 64


def _native_impls(op) -> list:
    """The IR op's dispatch list holding only its native implementation (kept on the op,
    one list object, so that a guard on it holds from one call to the next)."""
    cached = op.__dict__.get("_spd_native_impls")
    if cached is None:
        cached = op.__dict__["_spd_native_impls"] = [op.impls["native"]]
    return cached


def _native_forward(module):
    """The custom op's native forward, one bound method object per module."""
    cached = module.__dict__.get("_spd_native_forward")
    if cached is None:
        cached = module.__dict__["_spd_native_forward"] = module.forward_native
    return cached


def ir_ops() -> list:
    """vLLM's IR ops (``vllm.ir.ops``: RMSNorm and fused add + RMSNorm, activations)."""
    from vllm import ir

    found = []
    for name in dir(ir.ops):
        op = getattr(ir.ops, name)
        if hasattr(op, "impls") and hasattr(op, "_priority_impls") and "native" in op.impls:
            found.append(op)
    return found


@contextlib.contextmanager
def native_ops(modules):
    """While inside: every vLLM custom op under ``modules`` runs its native torch forward,
    vLLM's IR ops dispatch straight to their native implementation without the torch
    op wrapper (so dynamo traces into them), and dynamo may keep :data:`RECOMPILE_LIMIT`
    compiled versions of a function. Everything is restored on leaving."""
    from vllm import ir
    from vllm.model_executor.custom_op import CustomOp

    ops = {id(m): m for mod in modules for m in mod.modules() if isinstance(m, CustomOp)}.values()
    saved = [(m, m._forward_method) for m in ops]
    saved_ir = [(op, op._priority_impls) for op in ir_ops()]
    try:
        for m in ops:
            m._forward_method = _native_forward(m)
        for op, _ in saved_ir:
            op._priority_impls = _native_impls(op)
        with ir.enable_torch_wrap(False), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            yield
    finally:
        for m, forward in saved:
            m._forward_method = forward
        for op, impls in saved_ir:
            op._priority_impls = impls


def _slice(layers, first: int, last: int, capture: frozenset):
    def stage_slice(positions, hidden, residual):
        caught = {}
        for i in range(first, last):
            hidden, residual = layers[i](positions, hidden, residual)
            if i + 1 in capture:
                caught[i + 1] = hidden + residual
        return hidden, residual, caught
    return stage_slice


class CompiledStages:
    """Layer slices ``layers[first:last]`` as compiled functions (``torch.compile`` with
    ``backend``, Inductor by default). Call inside vLLM's forward context, as the layers
    themselves."""

    def __init__(self, layers, backend: str = "inductor"):
        self.layers = layers
        self.backend = backend
        self.fns: dict[tuple, object] = {}

    def __call__(self, first: int, last: int, positions, hidden, residual, capture=()):
        """Returns ``(hidden, residual, {anchor: hidden + residual after layer k - 1})``
        as running the layers one by one does."""
        keep = frozenset(k for k in capture if first < k <= last)
        key = (first, last, keep, residual is None)
        fn = self.fns.get(key)
        if fn is None:
            fn = self.fns[key] = torch.compile(_slice(self.layers, first, last, keep), backend=self.backend,
                                               fullgraph=False)
        if positions.shape[0] > 1:   # one graph for every batch size but 1 (dynamo specialises 1)
            for t in (positions, hidden, residual):
                if t is not None:
                    torch._dynamo.mark_dynamic(t, 0)
        with native_ops([self.layers[i] for i in range(first, last)]):
            return fn(positions, hidden, residual)
