"""What int8 weights cost a head's drafts: the head against its int8 copy on held-out data.

    python benchmarks/int8_head.py --target DIR --head HEAD --data generated.jsonl \\
        --eval-fraction 0.1 --max-length 256 --out result.json

The head is packed (``python -m vllm_spd.head pack --int8``) into ``--int8-out`` (default:
a temporary directory). Both heads then draft every held-out position of ``--data`` (the
prompts the trainer holds out at this ``--eval-fraction``) at a full pipeline, as the
trainer's evaluation does; reported: each head's draft accuracy (argmax = the float32
target's argmax), how often the two heads' argmax agree, and the weight files' sizes.
Acceptance inside vLLM: ``benchmarks/acceptance.py`` with each head.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from acceptance import hardware, write_result  # noqa: E402


def draft_argmax(trainer, head: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(draft argmax, teacher argmax)`` as draft indices over every held-out position."""
    from vllm_spd import checkpoint
    from vllm_spd.train import mask as mask_mod
    from vllm_spd.train.loss import valid_positions

    tensors = checkpoint.load_tensors(head)
    trainer.model.load_head_tensors({k: v.float() for k, v in tensors.items() if k != "draft_token_ids"})
    trainer.model.eval()
    rep = mask_mod.representative_depths(trainer.layout)
    ev, bs = trainer.eval_set, trainer.args.batch_size
    order = sorted(range(len(ev)), key=lambda i: len(ev[i].input_ids))
    preds, targets = [], []
    with torch.no_grad():
        for k in range(0, len(order), bs):
            logits, _, t_argmax, mask = trainer.batch_logits([ev[i] for i in order[k:k + bs]],
                                                             trainer.layout.num_stages, rep)
            valid = valid_positions(mask, t_argmax, trainer.t2d)
            preds.append(logits[valid].argmax(-1).cpu())
            targets.append(trainer.t2d[t_argmax[valid]].cpu())
    return torch.cat(preds), torch.cat(targets)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--head", required=True, help="a float head")
    p.add_argument("--data", required=True, nargs="+", help="conversations (the head's training data)")
    p.add_argument("--eval-fraction", type=float, default=0.02, help="as the head was trained with")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--int8-out", default=None, help="where the int8 copy goes (default: a temporary directory)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from vllm_spd import checkpoint
    from vllm_spd.head import pack_head
    from vllm_spd.train.trainer import Trainer, build_parser

    t0 = time.time()
    cfg = checkpoint.read_config(args.head)
    work = tempfile.mkdtemp(prefix="int8_head.")
    int8_dir = args.int8_out or os.path.join(work, "int8")
    packed = pack_head(args.head, int8_dir, int8=True)
    trainer = Trainer(build_parser().parse_args([
        "--target", args.target, "--num-stages", str(cfg.num_stages), "--anchors", ",".join(map(str, cfg.anchors)),
        "--stage-layers", ",".join(map(str, cfg.stage_layers)), "--draft-layers", str(cfg.num_draft_layers),
        "--data", *args.data, "--eval-fraction", str(args.eval_fraction), "--max-length", str(args.max_length),
        "--batch-size", str(args.batch_size), "--init", args.head, "--out", os.path.join(work, "trainer")]))
    trainer.setup()
    float_pred, target = draft_argmax(trainer, args.head)
    int8_pred, _ = draft_argmax(trainer, int8_dir)
    n = int(target.numel())
    result = {
        "benchmark": "int8_head", "hardware": hardware(), "target": os.path.abspath(args.target),
        "head": os.path.abspath(args.head), "int8_head": os.path.abspath(int8_dir),
        "head_provenance": {k: cfg.provenance.get(k) for k in ("steps", "train_examples", "final_eval_accuracy")},
        "num_stages": cfg.num_stages, "draft_layers": cfg.num_draft_layers, "draft_vocab_size": cfg.draft_vocab_size,
        "eval_conversations": len(trainer.eval_set), "positions": n,
        "accuracy_float": round(float((float_pred == target).float().mean()), 4),
        "accuracy_int8": round(float((int8_pred == target).float().mean()), 4),
        "argmax_agreement": round(float((float_pred == int8_pred).float().mean()), 4),
        "bytes_float": packed["bytes_before"], "bytes_int8": packed["bytes_after"],
        "max_abs_weight_error": packed["max_abs_error"], "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(result, indent=2))
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
