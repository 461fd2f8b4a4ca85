"""Targets and heads built for tests (on top of vllm_spd.offline_models)."""

from __future__ import annotations

import glob
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from vllm_spd.head import init_head


def predictable_target(src: str, out: str, damping: float = 0.001, seed: int = 0) -> str:
    """A copy of ``src`` whose layers barely touch the residual stream and whose LM
    head is untied and random: its greedy next token is close to a fixed function
    of the current token, so a head that reads the token embedding can draft it."""
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    path = glob.glob(os.path.join(tmp, "*.safetensors"))[0]
    sd = load_file(path)
    for name in sd:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            sd[name] = sd[name] * damping
    emb = sd["model.embed_tokens.weight"]
    gen = torch.Generator().manual_seed(seed)
    sd["lm_head.weight"] = torch.randn(emb.shape, generator=gen) * emb.std()
    save_file(sd, path)
    import json

    cfg_path = os.path.join(tmp, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["tie_word_embeddings"] = False
    json.dump(cfg, open(cfg_path, "w"))
    os.replace(tmp, out)
    return out


def mirror_head(target: str, num_stages: int, out: str, num_draft_layers: int = 1,
                context: float = 0.0) -> str:
    """A head that drafts ``lm_head(final_norm(embedding of the newest token))``:
    type projections pass anchor 0 through, tower layers add nothing (zero output
    projections; their attention still reads and writes the paged KV). ``context`` > 0
    gives the attention output projections random weights of that scale, so drafts
    also depend on earlier rows (every anchor of the prompt's rows included)."""
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    cfg = init_head(target, num_stages, out, num_draft_layers)
    sd = load_file(os.path.join(out, "model.safetensors"))
    H = cfg.hidden_size
    for a in range(cfg.num_types):
        w = torch.zeros(H, (a + 1) * H)
        w[:, :H] = torch.eye(H)
        sd[f"aggr_projs.{a}.weight"] = w
    gen = torch.Generator().manual_seed(0)
    for name in sorted(sd):
        if name.endswith("down_proj.weight") or (name.endswith("o_proj.weight") and not context):
            sd[name] = torch.zeros_like(sd[name])
        elif name.endswith("o_proj.weight"):
            w = sd[name]
            sd[name] = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.dtype) * context / w.shape[1] ** 0.5
        elif context and name.startswith("aggr_projs."):
            w = sd[name]   # every anchor of a row's type enters its row
            sd[name] = w + torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.dtype) * context / w.shape[1] ** 0.5
    save_file(sd, os.path.join(out, "model.safetensors"))
    return out
