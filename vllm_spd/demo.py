"""``make demo``: SPD on the embedded default model next to plain decoding.

Builds SmolLM2-135M-Instruct offline (first run only), answers a few chat prompts
greedily with plain vLLM and with SPD, prints both, checks they are identical and
reports SPD's per-draft acceptance. On a machine without a GPU all stages run in one
worker: this shows correctness and acceptance, not speed.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Give me three tips for staying focused while studying.",
    "Explain what a hash table is in two sentences.",
]


def _run(model: str, spec: dict | None, max_tokens: int):
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0,
              speculative_config=spec, disable_log_stats=False)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    start = time.perf_counter()
    outs = llm.chat([[{"role": "user", "content": p}] for p in PROMPTS], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    metrics = {m.name: m.value for m in llm.get_metrics() if "spec_decode_num" in m.name and hasattr(m, "value")}
    result = [(o.outputs[0].text, list(o.outputs[0].token_ids)) for o in outs]
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return result, seconds, metrics


MEASURED = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "decode_speed_n{n}_h200.json")


def measured_line(n: int, alpha: float, path: str | None = None) -> str | None:
    """The GPU decode this checkout measured at n stages nearest ``alpha``, with the draft
    module's cost priced in (``oracle+pdm_priced`` rows), beside plain TP=1 and TP=n at
    batch 1; None where no such run is on record."""
    import json

    path = path or MEASURED.format(n=n)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        run = json.load(f)
    rows = [r for r in run["rows"] if r.get("batch") == 1]
    spd = [r for r in rows if r["system"] == "spd" and r.get("drafter") == "oracle+pdm_priced"]
    plain = {r["system"]: r["out_tok_s"] for r in rows if r["system"] in ("tp1", "tpn")}
    if not spd or len(plain) < 2:
        return None
    r = min(spd, key=lambda r: abs(r["measured_alpha"] - alpha))
    return (f"measured on {run['hardware']} ({os.path.basename(path)}, Qwen3-8B shape, batch 1): SPD at "
            f"alpha {r['measured_alpha']:.2f} with the draft module's cost {r['out_tok_s']:.0f} tok/s, plain "
            f"TP=1 {plain['tp1']:.0f} ({r['out_tok_s'] / plain['tp1']:.2f}x), TP={n} {plain['tpn']:.0f} "
            f"({r['out_tok_s'] / plain['tpn']:.2f}x)")


def main(argv=None) -> int:
    for key, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                       "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}.items():
        os.environ.setdefault(key, value)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-stages", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--head", default=None, help="draft head directory (default: look in the default places)")
    args = ap.parse_args(argv)

    from vllm_spd.offline_models import smollm2

    model = smollm2()
    from vllm_spd.checkpoint import find_default_head

    spec = {"method": "spd", "num_stages": args.num_stages}
    head = args.head or find_default_head(model, args.num_stages)
    if head:
        # The head with prompt lookup on top drafts best on SmolLM2 (README).
        spec.update(model=head, drafter="hybrid")
    plain, t_plain, _ = _run(model, None, args.max_tokens)
    spd, t_spd, m = _run(model, spec, args.max_tokens)
    same = 0
    for prompt, (p_text, p_ids), (s_text, s_ids) in zip(PROMPTS, plain, spd):
        same += p_ids == s_ids
        print(f"\n### {prompt}\n--- plain vLLM:\n{p_text}\n--- SPD ({args.num_stages} stages):\n{s_text}\n"
              f"[{'identical' if p_ids == s_ids else 'DIFFERENT'} tokens]")
    drafts = m.get("vllm:spec_decode_num_draft_tokens", 0)
    accepted = m.get("vllm:spec_decode_num_accepted_tokens", 0)
    alpha = accepted / drafts if drafts else float("nan")
    n = args.num_stages
    print(f"\nSmolLM2-135M-Instruct, float32, CPU, {len(PROMPTS)} prompts x {args.max_tokens} tokens, greedy")
    print(f"identical outputs: {same}/{len(PROMPTS)}")
    drafter = f"the draft head in {head} with prompt lookup (hybrid)" if head else \
        "prompt-lookup n-grams (no draft head found)"
    print(f"drafted by {drafter}")
    print(f"SPD per-draft acceptance alpha = {alpha:.3f} ({int(accepted)}/{int(drafts)} drafts); "
          f"ideal speedup on {n} GPUs n/(1+(n-1)(1-alpha)) = {n / (1 + (n - 1) * (1 - alpha)):.2f}")
    measured = measured_line(n, alpha)
    print(measured or f"no GPU decode with n={n} and a priced draft module is on record in this checkout")
    if not head:
        print("  Prompt lookup only proposes tokens the text already holds, so on chat answers most of its\n"
              "  drafts miss. A trained draft head accepts far more: `make head` trains one for this model\n"
              "  on this machine's CPU (about an hour), and the next `make demo` uses it.")
    print(f"wall time here (all stages in one CPU worker, not a speed measurement): "
          f"plain {t_plain:.1f}s, SPD {t_spd:.1f}s")
    return 0 if same == len(PROMPTS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
