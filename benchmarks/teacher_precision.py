"""How often a lower-precision forward of the target picks another token than float32.

    python benchmarks/teacher_precision.py --target DIR --num 24 --max-new-tokens 160 \\
        --dtypes bfloat16 --out result.json

The target answers ``--num`` of the trainer's template prompts (``vllm_spd.train.prompts``,
never evaluation prompts) greedily in float32 (transformers ``generate``); then one
forward over prompt + answer per dtype gives the argmax at every answer position, which
is compared with the float32 forward's. That share is the fraction of training targets a
teacher in that dtype would get wrong for a head measured in float32 (``--teacher-dtype``
of the trainer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from acceptance import hardware, write_result  # noqa: E402

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--num", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--dtypes", nargs="+", default=["bfloat16"], choices=list(_DTYPES))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_spd.train.prompts import build_prompts

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(args.target)
    model = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).to(device).eval()
    prompts = build_prompts(3863, seed=0)
    random.Random(args.seed).shuffle(prompts)
    agree = {d: 0 for d in args.dtypes}
    total = 0
    t0 = time.time()
    for rec in prompts[: args.num]:
        ids = tok.apply_chat_template([{"role": "user", "content": rec["turns"][0]}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"].to(device)
        with torch.no_grad():
            seq = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
            start = ids.shape[1] - 1
            ref = model(seq).logits[0, start:-1].argmax(-1)
            for name in args.dtypes:
                low = model.to(_DTYPES[name])
                agree[name] += int((low(seq).logits[0, start:-1].argmax(-1) == ref).sum())
                model.to(torch.float32)
        total += ref.numel()
    rows = [{"dtype": d, "positions": total, "argmax_agreement": round(agree[d] / total, 4),
             "disagreement": round(1 - agree[d] / total, 4)} for d in args.dtypes]
    result = {"benchmark": "teacher_precision", "hardware": hardware(), "target": os.path.abspath(args.target),
              "prompts": args.num, "max_new_tokens": args.max_new_tokens, "seconds": round(time.time() - t0, 1),
              "rows": rows}
    print(json.dumps(result, indent=2))
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
