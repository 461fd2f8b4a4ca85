"""Import the reference implementation's v11 draft-head checkpoints into our format.

``python -m vllm_spd.import_v11 --checkpoint Qwen3.5-4B_s4_l4.pt --target DIR --out DIR``

A v11 file is a ``torch.save`` dict ``{"state_dict": ..., "config": ...}``:
``aggr_projs.{a}.weight`` [H, (a+1)H], ``lm_head.weight`` [K, H] and
``spec_layers.{j}.<HF decoder-layer names>``; the config carries ``version`` (11),
``num_stages``, ``num_spec_layers``, ``aggr_feature_bound`` (our anchors),
``hidden_size``, ``vocab_size``, ``draft_vocab_size`` and usually ``draft_token_ids``.
Tower layers are renamed ``spec_layers.j`` -> ``layers.j``; the stage split is the
uniform one the reference requires.

One semantic difference is kept visible: the reference's prompt rows used HF's
post-norm ``hidden_states[L]`` for an anchor equal to L, while ours is always the raw
pre-norm stream; heads with such an anchor import, with a warning.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import torch

from vllm_spd import checkpoint

from vllm_spd.core import layout
from vllm_spd.head import load_target_config

logger = logging.getLogger("vllm_spd")


def convert_v11(blob: dict, target_config, draft_token_ids: list[int] | None = None):
    """``(HeadConfig, tensors)`` from a loaded v11 dict; raises HeadError on a mismatch."""
    if not isinstance(blob, dict) or "state_dict" not in blob or "config" not in blob:
        raise checkpoint.HeadError("spd: not a v11 SPD checkpoint: expected a dict with 'state_dict' and 'config'")
    cfg, sd = blob["config"], blob["state_dict"]
    if cfg.get("version") != 11:
        raise checkpoint.HeadError(f"spd: checkpoint version {cfg.get('version')!r}: only version 11 heads can be imported")
    if cfg.get("stage_layers"):
        raise checkpoint.HeadError("spd: checkpoint has a v12 'stage_layers' split, which the reference never released")
    L, H, V = target_config.num_hidden_layers, target_config.hidden_size, target_config.vocab_size
    problems = [f"{k}: checkpoint {cfg.get(k)}, target {v}" for k, v in
                (("hidden_size", H), ("vocab_size", V)) if cfg.get(k) != v]
    if problems:
        raise checkpoint.HeadError("spd: checkpoint does not fit the target: " + "; ".join(problems))
    if target_config.model_type == "llama":
        raise checkpoint.HeadError("spd: reference heads for Llama targets use Qwen3-style layers with q/k norms, "
                                   "which a Llama target's layers do not have; not importable")
    n, anchors = int(cfg["num_stages"]), [int(a) for a in cfg["aggr_feature_bound"]]
    lay = layout.StageLayout.build(L, n, anchors)
    if L in anchors:
        logger.warning("spd import: anchor %d = the last layer's output; the reference fed prompt rows "
                       "its post-norm state, vllm_spd always uses the pre-norm stream", L)
    ids = draft_token_ids if draft_token_ids is not None else cfg.get("draft_token_ids")
    K = int(cfg.get("draft_vocab_size") or sd["lm_head.weight"].shape[0])
    if ids is None:
        if K != V:
            raise checkpoint.HeadError(f"spd: checkpoint has a {K}-token draft vocabulary but no draft_token_ids; "
                                       "pass the draft vocabulary JSON (--draft-vocab)")
        ids = list(range(V))
    tensors = {}
    for name, value in sd.items():
        if name.startswith("spec_layers."):
            name = "layers." + name[len("spec_layers."):]
        elif not name.startswith(("aggr_projs.", "lm_head.")):
            raise checkpoint.HeadError(f"spd: unexpected tensor {name!r} in a v11 state_dict")
        tensors[name] = value.detach().to(torch.float32).contiguous()
    tensors["draft_token_ids"] = torch.tensor(sorted(ids), dtype=torch.int64)
    overrides = {}
    gate = tensors.get("layers.0.mlp.gate_proj.weight")
    if gate is not None and gate.shape[0] != getattr(target_config, "intermediate_size", gate.shape[0]):
        overrides["intermediate_size"] = int(gate.shape[0])
    head_cfg = checkpoint.HeadConfig(
        target_architecture=(target_config.architectures or ["?"])[0], target_model_type=target_config.model_type,
        hidden_size=H, vocab_size=V, num_hidden_layers=L, num_stages=n,
        stage_layers=lay.stage_layers, anchors=anchors,
        num_draft_layers=int(cfg.get("num_spec_layers", 0)), draft_vocab_size=len(ids),
        layer_overrides=overrides, trained=True,
        provenance={"imported_from": "reference v11", "base_model_path": cfg.get("base_model_path"),
                    "trained_with_use_deepest": cfg.get("trained_with_use_deepest")},
    )
    return head_cfg, tensors


def import_v11(checkpoint_path: str, target_dir: str, out_dir: str, draft_vocab: str | None = None):
    try:
        blob = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise checkpoint.HeadError(f"cannot read {checkpoint_path!r} as a torch checkpoint: {e}") from None
    ids = None
    if draft_vocab:
        with open(draft_vocab) as f:
            ids = [int(i) for i in json.load(f)["token_ids"]]
    head_cfg, tensors = convert_v11(blob, load_target_config(target_dir), ids)
    checkpoint.save_head(out_dir, head_cfg, tensors)
    return head_cfg


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m vllm_spd.import_v11", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="reference v11 .pt file")
    p.add_argument("--target", required=True, help="the target model directory it was trained for")
    p.add_argument("--out", required=True, help="head directory to write")
    p.add_argument("--draft-vocab", help="reference draft_vocab/*.json when the checkpoint lacks draft_token_ids")
    args = p.parse_args(argv)
    cfg = import_v11(args.checkpoint, args.target, args.out, args.draft_vocab)
    print(json.dumps({"head": os.path.abspath(args.out), "num_stages": cfg.num_stages, "anchors": cfg.anchors,
                      "draft_layers": cfg.num_draft_layers, "draft_vocab_size": cfg.draft_vocab_size}))


if __name__ == "__main__":
    main()
