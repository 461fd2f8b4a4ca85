"""Create draft heads: ``python -m vllm_spd.head init --target DIR --num-stages N --out DIR``.

A randomly initialised head lets anyone run SPD end to end before training one (its
drafts are mostly wrong, so it shows correctness, not speed). The tower layers are the
target family's own HF decoder layers, which is also what the trainer optimises.
"""

from __future__ import annotations

import argparse
import copy
import glob
import importlib
import json
import os

import torch

from vllm_spd import checkpoint, layout


def load_target_config(target_dir: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(target_dir)


def tower_config(target_config, overrides: dict | None = None):
    """The target's config with the head's layer overrides, as used by tower layers."""
    cfg = copy.deepcopy(target_config)
    for key, value in (overrides or {}).items():
        setattr(cfg, key, value)
    return cfg


def family_class(target_config, part: str):
    """A transformers class of the target's family, e.g. part "DecoderLayer" for a
    Qwen3ForCausalLM target -> Qwen3DecoderLayer."""
    model_type = target_config.model_type
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    arch = (target_config.architectures or [""])[0]
    name = arch.replace("ForCausalLM", part)
    if not hasattr(module, name):
        raise ValueError(f"no class {name} in {module.__name__}")
    return getattr(module, name)


def tower_layer_class(target_config):
    """The HF decoder-layer class of the target's family (e.g. Qwen3DecoderLayer)."""
    return family_class(target_config, "DecoderLayer")


def read_target_tensor(target_dir: str, names: tuple[str, ...]) -> torch.Tensor | None:
    """First of ``names`` found in the target's safetensors files (None if absent)."""
    from safetensors import safe_open

    for path in sorted(glob.glob(os.path.join(target_dir, "*.safetensors"))):
        with safe_open(path, framework="pt") as f:
            for name in names:
                if name in f.keys():
                    return f.get_tensor(name)
    return None


def init_head(target_dir: str, num_stages: int, out_dir: str, num_draft_layers: int = 1,
              draft_token_ids: list[int] | None = None, anchors: list[int] | None = None,
              stage_layers: list[int] | None = None, seed: int = 0,
              layer_overrides: dict | None = None, std: float = 0.02) -> checkpoint.HeadConfig:
    """Write a randomly initialised head for ``target_dir`` into ``out_dir``."""
    target = load_target_config(target_dir)
    L, H, V = target.num_hidden_layers, target.hidden_size, target.vocab_size
    lay = layout.StageLayout.build(L, num_stages, anchors, stage_layers)
    ids = torch.arange(V) if draft_token_ids is None else torch.tensor(sorted(set(draft_token_ids)))
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for a in range(lay.num_types):
        tensors[f"aggr_projs.{a}.weight"] = torch.randn(H, (a + 1) * H, generator=gen) * std
    tcfg = tower_config(target, layer_overrides)
    layer_cls = tower_layer_class(target)
    for j in range(num_draft_layers):
        layer = layer_cls(tcfg, layer_idx=j)
        for name, p in layer.state_dict().items():
            value = torch.ones_like(p) if p.dim() == 1 else torch.randn(p.shape, generator=gen) * std
            tensors[f"layers.{j}.{name}"] = value.float()
    base_head = read_target_tensor(target_dir, ("lm_head.weight", "model.embed_tokens.weight"))
    if base_head is not None and tuple(base_head.shape) == (V, H):
        tensors["lm_head.weight"] = base_head[ids].float().clone()
    else:
        tensors["lm_head.weight"] = torch.randn(len(ids), H, generator=gen) * std
    tensors["draft_token_ids"] = ids.to(torch.int64)
    cfg = checkpoint.HeadConfig(
        target_architecture=(target.architectures or ["?"])[0], target_model_type=target.model_type,
        hidden_size=H, vocab_size=V, num_hidden_layers=L, num_stages=num_stages,
        stage_layers=lay.stage_layers, anchors=list(lay.anchors),
        num_draft_layers=num_draft_layers, draft_vocab_size=len(ids),
        layer_overrides=dict(layer_overrides or {}), trained=False,
        provenance={"init": "random", "seed": seed, "target": os.path.abspath(target_dir)},
    )
    checkpoint.save_head(out_dir, cfg, tensors)
    return cfg


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vllm_spd.head", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    ini = sub.add_parser("init", help="write a randomly initialised head")
    ini.add_argument("--target", required=True, help="target model directory (HF format)")
    ini.add_argument("--num-stages", type=int, required=True)
    ini.add_argument("--out", required=True)
    ini.add_argument("--draft-layers", type=int, default=1)
    ini.add_argument("--anchors", type=lambda s: [int(x) for x in s.split(",")], default=None,
                     help="comma-separated anchor layers, starting with 0 (default: stage boundaries)")
    ini.add_argument("--stage-layers", type=lambda s: [int(x) for x in s.split(",")], default=None)
    ini.add_argument("--draft-vocab-size", type=int, default=None,
                     help="draft vocabulary = token ids 0..K-1 (default: the full vocabulary)")
    ini.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ids = list(range(args.draft_vocab_size)) if args.draft_vocab_size else None
    cfg = init_head(args.target, args.num_stages, args.out, args.draft_layers, draft_token_ids=ids,
                    anchors=args.anchors, stage_layers=args.stage_layers, seed=args.seed)
    print(json.dumps({"head": os.path.abspath(args.out), "anchors": cfg.anchors,
                      "stage_layers": cfg.stage_layers}))


if __name__ == "__main__":
    main()
