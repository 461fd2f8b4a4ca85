"""The draft module for training, in plain torch/transformers.

Same computation and parameter names as the inference module (``vllm_spd.drafters.pdm``) and the
head checkpoint (``vllm_spd.checkpoint``)::

    aggr_projs.{a}.weight  [H, (a+1)H]   row input of type a = proj(cat(anchors 0..a))
    layers.{j}.*                         the target family's HF decoder layer
    lm_head.weight         [K, H]        draft-vocabulary head

so ``state_dict()`` plus ``draft_token_ids`` is a head (``head_tensors``). Positions go
through the target's own rotary embedding (non-persistent buffers, not saved); the
output goes through the target's final norm, which is shared and frozen and therefore
kept outside this module's parameters.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vllm_spd.core.layout import StageLayout
from vllm_spd.head import family_class, tower_config, tower_layer_class
from vllm_spd.train.attention import ATTENTION

TOWER_INITS = ("random", "target")


def rotary_class(target_config):
    """The family's rotary embedding class (e.g. Qwen3RotaryEmbedding)."""
    return family_class(target_config, "RotaryEmbedding")


def target_parts(target_model):
    """``(final_norm, rotary_emb, lm_head_weight)`` of an HF causal LM."""
    base = target_model.get_decoder() if hasattr(target_model, "get_decoder") else target_model.model
    return base.norm, base.rotary_emb, target_model.get_output_embeddings().weight


class DraftModule(nn.Module):
    def __init__(self, target_config, layout: StageLayout, num_draft_layers: int,
                 draft_vocab_size: int, final_norm: nn.Module, rotary_emb: nn.Module | None = None,
                 layer_overrides: dict | None = None, init_std: float = 0.02):
        super().__init__()
        H = target_config.hidden_size
        self.layout = layout
        self.aggr_projs = nn.ModuleList(
            nn.Linear((a + 1) * H, H, bias=False) for a in range(layout.num_types))
        for proj in self.aggr_projs:
            nn.init.normal_(proj.weight, std=init_std)
        tcfg = tower_config(target_config, layer_overrides)
        # The training layout needs an explicit mask: an additive 4D one goes to SDPA,
        # a FlexAttention BlockMask to FlexAttention (vllm_spd.train.attention).
        tcfg._attn_implementation = ATTENTION
        layer_cls = tower_layer_class(target_config)
        self.layers = nn.ModuleList(layer_cls(tcfg, layer_idx=j) for j in range(num_draft_layers))
        self.lm_head = nn.Linear(H, draft_vocab_size, bias=False)
        self.rotary_emb = copy.deepcopy(rotary_emb) if rotary_emb is not None else rotary_class(target_config)(tcfg)
        if any(True for _ in self.rotary_emb.parameters()):
            raise ValueError("the rotary embedding module must not have parameters")
        # Shared with the target and frozen: a tuple keeps it out of state_dict/parameters.
        self._final_norm = (final_norm,)

    @classmethod
    def from_target(cls, target_model, layout: StageLayout, num_draft_layers: int,
                    draft_token_ids: torch.Tensor, layer_overrides: dict | None = None,
                    tower_init: str = "random") -> "DraftModule":
        """A fresh module for ``target_model`` whose draft head starts as the target's
        LM-head rows of the draft tokens; its tower random (``tower_init="random"``) or
        as the target's last layers (``"target"``, see ``init_tower_from_target``)."""
        if tower_init not in TOWER_INITS:
            raise ValueError(f"tower_init must be one of {TOWER_INITS}, not {tower_init!r}")
        L = target_model.config.num_hidden_layers
        if tower_init == "target" and num_draft_layers > L:
            raise ValueError(f"tower init from the target: {num_draft_layers} draft layers but the target has {L}")
        norm, rotary, lm_head = target_parts(target_model)
        mod = cls(target_model.config, layout, num_draft_layers, int(draft_token_ids.numel()),
                  norm, rotary, layer_overrides)
        with torch.no_grad():
            mod.lm_head.weight.copy_(lm_head.detach()[draft_token_ids.to(lm_head.device)].float())
        if tower_init == "target":
            base = target_model.get_decoder() if hasattr(target_model, "get_decoder") else target_model.model
            mod.init_tower_from_target(base.layers)
        return mod

    def init_tower_from_target(self, target_layers) -> list[int]:
        """Draft layer j starts as target layer ``L - Ls + j`` (the last ``Ls`` layers, the
        ones that feed the final norm and LM head) and aggregation type a as the identity
        on its deepest anchor (``anchors[a]``, the last block of its input). At step 0 a
        row of the deepest type is then the target's own computation from that anchor on.
        Returns the copied target layer indices."""
        L, Ls = len(target_layers), len(self.layers)
        if Ls > L:
            raise ValueError(f"tower init from the target: {Ls} draft layers but the target has {L}")
        sources = list(range(L - Ls, L))
        for j, i in enumerate(sources):
            want, got = self.layers[j].state_dict(), target_layers[i].state_dict()
            wrong = sorted(k for k in want if k not in got or tuple(got[k].shape) != tuple(want[k].shape))
            wrong += sorted(set(got) - set(want))
            if wrong:
                raise ValueError(f"tower init from the target: draft layer {j} does not match target layer {i} "
                                 f"(layer overrides?): {wrong[:5]}")
            self.layers[j].load_state_dict({k: v.detach().to(want[k].dtype) for k, v in got.items()})
        with torch.no_grad():
            for a, proj in enumerate(self.aggr_projs):
                H = proj.weight.shape[0]
                proj.weight.zero_()
                proj.weight[:, a * H:(a + 1) * H] = torch.eye(H, dtype=proj.weight.dtype)
        return sources

    @property
    def final_norm(self) -> nn.Module:
        return self._final_norm[0]

    # -- pieces ------------------------------------------------------------------------
    def aggregate(self, anchor_states, a: int) -> torch.Tensor:
        """Rows of type ``a``: ``aggr_projs[a](cat(anchor_states[0..a], -1))``."""
        w = self.aggr_projs[a].weight
        x = torch.cat([h.to(w.dtype) for h in anchor_states[: a + 1]], -1)
        return self.aggr_projs[a](x)

    def run_layers(self, rows: torch.Tensor, position_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The tower over ``rows`` [B, R, H] at ``position_ids`` [B, R] with an additive
        ``[B, 1, R, R]`` mask or a FlexAttention ``BlockMask``."""
        pos_emb = self.rotary_emb(rows, position_ids)
        h = rows
        for layer in self.layers:
            out = layer(h, attention_mask=attention_mask, position_ids=position_ids,
                        position_embeddings=pos_emb)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Target final norm, then the draft head: ``[..., K]``."""
        normed = self.final_norm(hidden.to(self.final_norm.weight.dtype))
        return self.lm_head(normed.to(self.lm_head.weight.dtype))

    # -- training forward ------------------------------------------------------------
    def forward(self, anchor_states, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                block_types: list[int], decode_type: int = 0) -> torch.Tensor:
        """Training forward over the block layout.

        ``anchor_states``: one ``[B, S, H]`` tensor per anchor (layout order);
        ``position_ids``: ``[B, S]``; ``attention_mask``: additive ``[B, 1, R, R]`` for
        ``R = len(block_types) * S`` (see ``mask.attention_bias``). Returns the draft
        logits ``[B, S, K]`` of the ``decode_type`` block (row t predicts token t+1).
        """
        S = position_ids.shape[1]
        rows = torch.cat([self.aggregate(anchor_states, a) for a in block_types], 1)
        pos = position_ids.repeat(1, len(block_types))
        hidden = self.run_layers(rows, pos, attention_mask)
        b = block_types.index(decode_type)
        return self.logits(hidden[:, b * S:(b + 1) * S])

    def head_tensors(self, draft_token_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict:
        """The head checkpoint's tensors (CPU, contiguous)."""
        out = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        out["draft_token_ids"] = draft_token_ids.detach().to("cpu", torch.int64).contiguous()
        return out

    def load_head_tensors(self, tensors: dict) -> None:
        own = self.state_dict()
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own) - {"draft_token_ids"})
        if missing or unexpected:
            raise ValueError(f"head tensors do not fit: missing {missing}, unexpected {unexpected}")
        self.load_state_dict({k: v for k, v in tensors.items() if k != "draft_token_ids"})
