"""Held-out draft accuracy of a random tower against one started from the target's layers.

    python benchmarks/tower_init.py --target DIR --data generated.jsonl --num-stages 4 \\
        --draft-layers 4 --steps 150 --eval-every 50 --out result.json [-- more trainer args]

Trains two heads with the trainer (``vllm_spd.train``) on the same data, held-out
prompts, seed and schedule, one per ``--tower-init`` (random, target), and reports each
one's held-out loss and draft accuracy (full window) at every evaluation, so the two
starts are compared step for step. Arguments after ``--`` go to both trainings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from acceptance import hardware, write_result  # noqa: E402


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--num-stages", type=int, default=4)
    p.add_argument("--draft-layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--inits", nargs="+", default=["random", "target"])
    p.add_argument("--work", default=None, help="where the heads go (default: a temporary folder)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from vllm_spd import checkpoint
    from vllm_spd.train.trainer import main as train

    work = args.work or tempfile.mkdtemp(prefix="spd_tower_init_")
    runs = []
    for init in args.inits:
        out = os.path.join(work, init)
        t0 = time.perf_counter()
        train(["--target", args.target, "--data", *args.data, "--num-stages", str(args.num_stages),
                         "--draft-layers", str(args.draft_layers), "--steps", str(args.steps),
                         "--eval-every", str(args.eval_every), "--tower-init", init, "--out", out,
                         "--no-progress", *extra])
        with open(os.path.join(out, "train_log.jsonl")) as f:
            evals = [h for h in map(json.loads, f) if "eval_loss" in h]
        row = {"tower_init": init, "seconds": round(time.perf_counter() - t0, 1),
               "train_examples": checkpoint.read_config(out).provenance.get("train_examples"),
               "evals": [{"step": e["step"], "eval_loss": round(e["eval_loss"], 4),
                          "eval_accuracy": round(e["eval_accuracy"], 4)} for e in evals]}
        print(json.dumps(row), flush=True)
        runs.append(row)
    result = {"benchmark": "tower_init", "hardware": hardware(), "target": os.path.abspath(args.target),
              "data": [os.path.abspath(d) for d in args.data], "num_stages": args.num_stages,
              "draft_layers": args.draft_layers, "steps": args.steps, "trainer_args": extra, "runs": runs}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
