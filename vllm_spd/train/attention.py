"""The draft module's attention in training: the structural mask as a dense additive
bias (SDPA) or as a block-sparse FlexAttention mask.

The training layout has ``blocks x S`` rows (one block per aggregation type), but a
query row reads one type per key position, so with five types about four fifths of the
``[R, R]`` matrix is masked, and outside a few diagonals only the deepest type's block
is visible. A dense bias costs ``B x R x R`` values written, then read by every layer
forward and backward; FlexAttention instead skips the tiles of the matrix that hold no
visible pair and computes the rest with the mask evaluated in the kernel.

Both paths go through one attention function, registered with transformers under
``ATTENTION``: a ``BlockMask`` selects FlexAttention (compiled on CUDA; the unfused
reference elsewhere, which is slow and meant for tests), any other mask goes to
transformers' SDPA function unchanged. ``block_mask`` builds the same visibility as
``mask.attention_bias`` (padded keys hidden, a padded query row sees only itself).
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "spd_train"
BLOCK = 128          # FlexAttention's tile; sequences are padded to a multiple of it

_compiled = None


def _flex_kernel(device: torch.device):
    """The compiled FlexAttention on CUDA (one compile per shape: pad sequences to
    ``BLOCK`` so a run sees few), the eager reference elsewhere."""
    global _compiled
    if device.type != "cuda":
        return flex_attention
    if _compiled is None:
        import torch._dynamo.config as dynamo_config

        # Shapes: a few padded lengths x the training and the last evaluation batch.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention interface: ``query`` ``[B, Hq, R, D]``, ``key``/``value``
    ``[B, Hkv, R, D]``; returns ``([B, R, Hq, D], None)``."""
    if isinstance(attention_mask, BlockMask):
        if dropout:
            raise ValueError("the draft module's FlexAttention path has no attention dropout")
        out = _flex_kernel(query.device)(query, key, value, block_mask=attention_mask, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                  dropout=dropout, **kwargs)


AttentionInterface.register(ATTENTION, attention_forward)


def resolve(choice: str, device: torch.device) -> str:
    """``auto`` -> ``sdpa``: FlexAttention stays opt-in until its training speed has been
    measured on a GPU (``benchmarks/train_speed.py``). ``flex`` needs CUDA: PyTorch has
    its backward there only (elsewhere its forward is an unfused reference, for tests)."""
    if choice == "auto":
        return "sdpa"
    if choice not in ("flex", "sdpa"):
        raise ValueError(f"attention must be auto, flex or sdpa, got {choice!r}")
    if choice == "flex" and device.type != "cuda":
        raise ValueError(f"--attention flex trains on CUDA only (PyTorch has no FlexAttention backward on "
                         f"{device.type}): use --attention sdpa")
    return choice


def padded_length(seq_len: int) -> int:
    return -(-seq_len // BLOCK) * BLOCK


def mask_mod(required: torch.Tensor, block_types, valid: torch.Tensor):
    """FlexAttention ``mask_mod`` of the training layout.

    ``required``: ``[blocks, S]`` from ``mask.required_types`` (the key type a query
    block may read at each distance); ``block_types``: the type of every block;
    ``valid``: ``[B, S]`` bool, valid tokens contiguous (right padding).
    """
    S = valid.shape[1]
    key_types = torch.as_tensor(list(block_types), device=valid.device)

    def visible(b, h, q, kv):
        qb, kb = q // S, kv // S
        t, T = q - qb * S, kv - kb * S
        delta = t - T
        ok = (delta >= 0) & (key_types[kb] == required[qb, delta.clamp(min=0)])
        vq, vk = valid[b, t], valid[b, T]
        return (ok & vq & vk) | (~vq & (q == kv))

    return visible


def block_mask(required: torch.Tensor, block_types, valid: torch.Tensor) -> BlockMask:
    """The ``BlockMask`` for ``attention_forward`` (same visibility as
    ``mask.attention_bias(structural_mask(...), valid, blocks)``)."""
    B, S = valid.shape
    R = len(block_types) * S
    return create_block_mask(mask_mod(required, block_types, valid), B, None, R, R,
                             device=valid.device, BLOCK_SIZE=BLOCK)
