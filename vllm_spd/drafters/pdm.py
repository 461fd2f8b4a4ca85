"""The Pipeline Draft Module (PDM) as vLLM layers, and its weight loading.

Rows in, draft logits out:

- a row is one token at some depth; its type ``a = depth_to_type[depth]`` picks the
  projection ``aggr_projs[a]`` applied to the anchors ``0..a`` of that token;
- the rows of a request run through ``Ls`` decoder layers of the target's own family
  (vLLM layer classes, so they get paged KV in the engine's cache and RoPE at
  absolute positions) as one causal chunk over the request's cached finished rows;
- the last row goes through the target's final norm (shared, frozen) and the
  draft-vocabulary head; ``draft_token_ids`` maps draft indices to full-vocab ids.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from vllm_spd import checkpoint
from vllm_spd.head import tower_config
from vllm_spd.kernels import aggregate_anchors, draft_head, pack_aggregation_weights

PREFIX = "spd_pdm"

# HF parameter name -> (vLLM fused parameter, shard id)
_STACKED = {
    "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}


def _build_layer(layer_cls, vllm_config, hf_config, prefix: str) -> nn.Module:
    params = inspect.signature(layer_cls.__init__).parameters
    if "vllm_config" in params:   # Llama family
        return layer_cls(vllm_config=vllm_config, prefix=prefix, config=hf_config)
    return layer_cls(config=hf_config, cache_config=vllm_config.cache_config, quant_config=None, prefix=prefix)


class PipelineDraftModule(nn.Module):
    def __init__(self, vllm_config, head_cfg: checkpoint.HeadConfig, target_model: nn.Module):
        super().__init__()
        H = head_cfg.hidden_size
        dtype = vllm_config.model_config.dtype
        self.head_cfg = head_cfg
        self.aggr_projs = nn.ModuleList(
            nn.Linear((a + 1) * H, H, bias=False, dtype=dtype) for a in range(head_cfg.num_types))
        tcfg = tower_config(vllm_config.model_config.hf_config, head_cfg.layer_overrides)
        layer_cls = type(target_model.model.layers[target_model.model.start_layer])
        self.layers = nn.ModuleList(
            _build_layer(layer_cls, vllm_config, tcfg, f"{PREFIX}.layers.{j}") for j in range(head_cfg.num_draft_layers))
        self.lm_head = nn.Parameter(torch.empty(head_cfg.draft_vocab_size, H, dtype=dtype), requires_grad=False)
        self.register_buffer("draft_token_ids", torch.zeros(head_cfg.draft_vocab_size, dtype=torch.int64))
        # Shared with the target, not a parameter of the head (kept out of the module tree).
        self._final_norm = (target_model.model.norm,)

    @property
    def attention_layer_names(self) -> list[str]:
        return [layer.self_attn.attn.layer_name for layer in self.layers]

    def aggregate(self, anchors: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Row r: ``aggr_projs[a](cat(anchors[0..a, r]))`` with ``a = types[r]``.

        ``anchors`` is ``[m, R, H]``; entries above a row's type are never read. One
        fused launch on GPU (``vllm_spd.kernels``), the torch reference elsewhere.
        """
        return aggregate_anchors(anchors, types, self.packed)

    def forward(self, positions: torch.Tensor, rows: torch.Tensor):
        hidden, residual = rows, None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        return hidden, residual

    def draft_logits(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        normed, _ = self._final_norm[0](hidden, residual)
        return normed @ self.lm_head.t()

    def draft_greedy(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Full-vocab argmax ids, fused (norm + head + argmax, no logits written) on GPU."""
        norm = self._final_norm[0]
        ids, _ = draft_head(hidden + residual, norm.weight, norm.variance_epsilon, self.lm_head,
                            self.draft_token_ids)
        return ids

    def load_head(self, head_dir: str) -> None:
        tensors = checkpoint.load_tensors(head_dir)
        checkpoint.check_tensors(self.head_cfg, tensors, head_dir)
        own = dict(self.named_parameters())
        loaded = set()
        for name, value in tensors.items():
            if name == "draft_token_ids":
                self.draft_token_ids.copy_(value)
                continue
            if name == "lm_head.weight":
                self.lm_head.data.copy_(value.to(self.lm_head.dtype))
                loaded.add("lm_head")
                continue
            parts = name.split(".")
            target_name, shard = name, None
            for hf_name, (fused, shard_id) in _STACKED.items():
                if hf_name in parts:
                    target_name, shard = name.replace(hf_name, fused), shard_id
                    break
            param = own.get(target_name)
            if param is None:
                raise checkpoint.HeadError(f"spd: head {head_dir!r}: unexpected tensor {name!r} for this target's layers")
            loader = getattr(param, "weight_loader", None)
            value = value.to(param.dtype)
            if shard is not None:
                loader(param, value, shard)
            elif loader is not None:
                loader(param, value)
            else:
                param.data.copy_(value)
            loaded.add(target_name)
        missing = sorted(set(own) - loaded)
        if missing:
            raise checkpoint.HeadError(f"spd: head {head_dir!r} lacks weights for {missing}")
        self.pack_projections()

    def pack_projections(self) -> None:
        """Move the type projections into the one buffer the fused kernel reads."""
        self.packed = pack_aggregation_weights([p.weight.data for p in self.aggr_projs])
        del self.aggr_projs   # the packed buffer is the only copy from here on
