"""Training throughput of the head trainer: optimizer steps per second per setting.

    python benchmarks/train_speed.py --target DIR --num-stages 4 --draft-layers 4 \\
        --settings sdpa:bfloat16 flex:bfloat16 flex:float32 --steps 30 --out result.json

Each setting is ``ATTENTION:TEACHER_DTYPE`` (the trainer's ``--attention`` and
``--teacher-dtype``). The steps are the trainer's own (``Trainer.batch_loss``, backward,
clipping, AdamW, schedule) on synthetic conversations: a short user turn and an answer
of random words from the tokenizer's vocabulary, cut at ``--max-length`` tokens, so
every batch is as long as the trainer allows (the slowest case; real data has shorter
batches). Fills are drawn as in training. The first ``--warmup`` steps of a setting
(FlexAttention compiles there) are left out; reported: median and mean step time,
steps/s and trained positions/s, and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from acceptance import hardware, write_result  # noqa: E402


def synthetic_conversations(tokenizer, num: int, words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    vocab = [t for t in tokenizer.get_vocab() if t.isalpha() and 3 <= len(t) <= 8]
    vocab.sort()
    out = []
    for _ in range(num):
        user = " ".join(rng.choice(vocab) for _ in range(12))
        answer = " ".join(rng.choice(vocab) for _ in range(words))
        out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    return out


def measure(args, attention: str, teacher_dtype: str, data: str, out_dir: str) -> dict:
    from vllm_spd.train import trainer as trainer_mod
    from vllm_spd.train import mask as mask_mod
    from vllm_spd.train.trainer import draw_fill

    targs = trainer_mod.build_parser().parse_args([
        "--target", args.target, "--num-stages", str(args.num_stages), "--draft-layers", str(args.draft_layers),
        "--draft-vocab-size", str(args.draft_vocab_size), "--data", data, "--out", out_dir,
        "--max-length", str(args.max_length), "--batch-size", str(args.batch_size), "--eval-fraction", "0",
        "--steps", str(args.warmup + args.steps), "--attention", attention, "--teacher-dtype", teacher_dtype,
        "--no-progress"])
    tr = trainer_mod.Trainer(targs)
    tr.setup()
    cuda = tr.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, positions = [], 0
    for step in range(args.warmup + args.steps):
        rng = random.Random(step)
        fill = draw_fill(tr.layout.num_stages, targs.full_fill_prob, rng)
        rep = mask_mod.representative_depths(tr.layout)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = tr.batch_loss(tr.batch_for_step(step), fill, rep)
        tr.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.model.parameters(), targs.max_grad_norm)
        tr.opt.step()
        tr.sched.step()
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            positions += out.num_valid
    med = statistics.median(times)
    mean = statistics.fmean(times)
    row = {"attention": tr.attention, "teacher_dtype": str(tr.teacher_dtype).replace("torch.", ""),
           "compute_dtype": str(tr.dtype).replace("torch.", ""), "steps": len(times),
           "median_step_s": round(med, 5), "mean_step_s": round(mean, 5), "steps_per_s": round(1 / mean, 2),
           "positions_per_s": round(positions / sum(times)),
           "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
    del tr
    if cuda:
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--num-stages", type=int, default=4)
    p.add_argument("--draft-layers", type=int, default=4)
    p.add_argument("--draft-vocab-size", type=int, default=16384)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--settings", nargs="+", default=["sdpa:bfloat16", "flex:bfloat16", "flex:float32"],
                   help="ATTENTION:TEACHER_DTYPE pairs")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.target)
    work = tempfile.mkdtemp(prefix="spd_train_speed_")
    data = os.path.join(work, "synthetic.jsonl")
    n = args.batch_size * (args.warmup + args.steps)
    with open(data, "w") as f:
        for rec in synthetic_conversations(tok, n, words=args.max_length):
            f.write(json.dumps(rec) + "\n")
    rows = []
    for i, setting in enumerate(args.settings):
        attention, _, teacher = setting.partition(":")
        row = measure(args, attention, teacher or "auto", data, os.path.join(work, f"run{i}"))
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"benchmark": "train_speed", "hardware": hardware(), "target": os.path.abspath(args.target),
              "num_stages": args.num_stages, "draft_layers": args.draft_layers,
              "draft_vocab_size": args.draft_vocab_size, "batch_size": args.batch_size,
              "max_length": args.max_length, "data": "synthetic: every batch at --max-length", "rows": rows}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
