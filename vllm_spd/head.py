"""Create and pack draft heads.

``python -m vllm_spd.head init --target DIR --num-stages N --out DIR``: a randomly
initialised head lets anyone run SPD end to end before training one (its drafts are
mostly wrong, so it shows correctness, not speed). The tower layers are the target
family's own HF decoder layers, which is also what the trainer optimises.

``python -m vllm_spd.head pack --int8 IN_DIR OUT_DIR`` (or ``--dtype bfloat16``): a copy
of a head with smaller weights, e.g. to ship it (``checkpoint``'s weight formats): int8
with per-row scales is a quarter of float32. It prints both sizes and the largest
weight change.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import importlib
import json
import os

import torch

from vllm_spd import checkpoint

from vllm_spd.core import layout


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


PACK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pack_head(in_dir: str, out_dir: str, int8: bool = False, dtype: str | None = None) -> dict:
    """Write ``in_dir``'s head to ``out_dir`` with int8 weights (``int8``) or float weights
    of ``dtype``; config and provenance are kept, with a ``packed`` entry added. Returns
    the weight files' sizes and the largest absolute change of a weight."""
    if os.path.abspath(in_dir) == os.path.abspath(out_dir):
        raise checkpoint.HeadError(f"spd: pack writes a copy: {out_dir!r} is the head itself")
    cfg = checkpoint.read_config(in_dir)
    original = checkpoint.load_tensors(in_dir)
    checkpoint.check_tensors(cfg, original, in_dir)
    tensors = original
    if dtype is not None:
        tensors = {k: v.to(PACK_DTYPES[dtype]) if v.is_floating_point() else v for k, v in original.items()}
    weight_format = "int8-rowwise" if int8 else "float"
    packed = {"from": os.path.abspath(in_dir), "weight_format": weight_format, "dtype": dtype,
              "from_weight_format": cfg.weight_format}
    out_cfg = dataclasses.replace(cfg, weight_format=weight_format,
                                  provenance={**cfg.provenance, "packed": packed})
    checkpoint.save_head(out_dir, out_cfg, tensors)
    back = checkpoint.load_tensors(out_dir)
    max_error = max((float((back[k].double() - v.double()).abs().max()) for k, v in original.items()
                     if v.numel()), default=0.0)
    before, after = (os.path.getsize(os.path.join(d, checkpoint.WEIGHTS_FILE)) for d in (in_dir, out_dir))
    return {"head": os.path.abspath(out_dir), "weight_format": weight_format, "dtype": dtype,
            "bytes_before": before, "bytes_after": after, "max_abs_error": max_error}


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
    pack = sub.add_parser("pack", help="write a copy of a head with smaller weights")
    pack.add_argument("in_dir", metavar="IN_DIR")
    pack.add_argument("out_dir", metavar="OUT_DIR")
    how = pack.add_mutually_exclusive_group(required=True)
    how.add_argument("--int8", action="store_true", help="int8 weights with one float32 scale per row")
    how.add_argument("--dtype", choices=list(PACK_DTYPES), help="float weights of this dtype")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        report = pack_head(args.in_dir, args.out_dir, args.int8, args.dtype)
        print(f"{report['head']}: {report['weight_format']}{'' if args.int8 else ' ' + args.dtype}, "
              f"{report['bytes_before'] / 1e6:.2f} MB -> {report['bytes_after'] / 1e6:.2f} MB "
              f"({report['bytes_after'] / report['bytes_before']:.1%}), "
              f"max abs weight error {report['max_abs_error']:.3g}")
        print(json.dumps(report))
        return
    ids = list(range(args.draft_vocab_size)) if args.draft_vocab_size else None
    cfg = init_head(args.target, args.num_stages, args.out, args.draft_layers, draft_token_ids=ids,
                    anchors=args.anchors, stage_layers=args.stage_layers, seed=args.seed)
    print(json.dumps({"head": os.path.abspath(args.out), "anchors": cfg.anchors,
                      "stage_layers": cfg.stage_layers}))


if __name__ == "__main__":
    main()
