#!/usr/bin/env python3
"""What a request's features cost: decode speed per kind of request, plain vLLM and SPD.

    python benchmarks/request_features.py --target DIR --spec '{"method": "spd", "num_stages": 2}' \\
        --max-tokens 128 --out result.json

One in-process engine per system (plain vLLM, then SPD), float32 on CPU, bf16 on a GPU.
Each kind of request runs alone (batch 1, greedy, a fixed chat prompt, ``--runs`` times
after a warm-up):

- ``plain``: no extras (SPD's device cycle where it applies);
- ``penalties``: presence, frequency and repetition penalties (the host-driven cycle);
- ``logprobs``: 5 logprobs per token (the host-driven cycle);
- ``json_schema``: a JSON-schema structured output (the host-driven cycle, one commit
  per engine step: the grammar's mask is known for the committed frontier only).

Per system and kind it reports tok/s (output tokens / wall time of the generate call,
prefill included), the ratio to the same system's ``plain``, the output length, and
whether SPD's tokens equal plain vLLM's (they must: greedy SPD is exact). The JSON-schema
request stops where its grammar ends; the others run to ``--max-tokens``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time

PROMPT = "List five facts about the Moon, then describe its phases."
SCHEMA = {"type": "object", "properties": {"facts": {"type": "array", "items": {"type": "string"}},
                                           "phases": {"type": "string"}},
          "required": ["facts", "phases"]}


def kinds(max_tokens: int) -> dict:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    def sp(**kw):
        return SamplingParams(max_tokens=max_tokens, temperature=0.0, **{"ignore_eos": True, **kw})

    # A grammar ends at its end state (only EOS allowed after it), so that request stops there.
    return {"plain": sp(), "penalties": sp(presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.1),
            "logprobs": sp(logprobs=5),
            "json_schema": sp(structured_outputs=StructuredOutputsParams(json=SCHEMA), ignore_eos=False)}


def run_system(target: str, spec: dict | None, max_tokens: int, runs: int, dtype: str) -> dict:
    from vllm import LLM

    llm = LLM(model=target, dtype=dtype, max_model_len=1024, seed=0, speculative_config=spec)
    messages = [{"role": "user", "content": PROMPT}]
    rows = {}
    for name, params in kinds(max_tokens).items():
        llm.chat(messages, params, use_tqdm=False)   # warm-up (and the grammar's compilation)
        times, tokens = [], None
        for _ in range(runs):
            t0 = time.perf_counter()
            out = llm.chat(messages, params, use_tqdm=False)[0].outputs[0]
            times.append(time.perf_counter() - t0)
            tokens = list(out.token_ids)
        best = min(times)
        rows[name] = {"tok_s": len(tokens) / best, "seconds": times, "tokens": tokens}
        print("ROW", json.dumps({"system": "spd" if spec else "plain", "kind": name,
                                 "tok_s": round(rows[name]["tok_s"], 2)}), flush=True)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return rows


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        return f"{model}, {os.cpu_count()} cores"
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--spec", required=True, help="the SPD speculative_config as JSON")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import torch

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    spec = json.loads(args.spec)
    plain = run_system(args.target, None, args.max_tokens, args.runs, dtype)
    spd = run_system(args.target, spec, args.max_tokens, args.runs, dtype)
    table = {}
    for name in plain:
        table[name] = {
            "plain_tok_s": round(plain[name]["tok_s"], 2), "spd_tok_s": round(spd[name]["tok_s"], 2),
            "plain_vs_plain_kind": round(plain[name]["tok_s"] / plain["plain"]["tok_s"], 3),
            "spd_vs_spd_plain_kind": round(spd[name]["tok_s"] / spd["plain"]["tok_s"], 3),
            "spd_vs_plain": round(spd[name]["tok_s"] / plain[name]["tok_s"], 3),
            "output_tokens": len(plain[name]["tokens"]),
            "identical": spd[name]["tokens"] == plain[name]["tokens"],
        }
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    result = {"target": args.target, "spec": spec, "max_tokens": args.max_tokens, "runs": args.runs,
              "dtype": dtype, "device": device, "date": time.strftime("%Y-%m-%d"), "kinds": table}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
