#!/usr/bin/env python3
"""SPD acceptance inside vLLM: per-draft alpha, tokens per cycle, ideal speedup.

    python benchmarks/acceptance.py --target DIR --head DIR --num-stages 4 \\
        --prompts mt_bench.jsonl humaneval.jsonl --limit 40 --max-tokens 128 --out result.json

Prompts are EAGLE-style JSONL (``{"turns": [...]}``, first turn used), sent through
``llm.chat`` (the target's chat template). One in-process engine runs every file at every
temperature (default 0 and 1); numbers are differences of counters before and after
each run:

- ``alpha`` = accepted / drafts from vLLM's spec-decode counters (SPD reports one draft
  per verification, so this is the per-draft acceptance);
- ``cycles``: SPD cycles summed over requests, counted by the worker (the scheduler's
  ``_spd_totals``). If those are unreachable (multi-process engine), the model
  ``accepted + n*rejected + (n-1)*requests`` is used (accept = 1 cycle, reject = the
  corrected token plus n-1 empty cycles, n-1 fill cycles after the prompt) and
  ``cycles_source`` says "model";
- ``tokens_per_cycle`` = output tokens / cycles, where output tokens include the first
  token, sampled at the end of prefill (the SPD paper's reference code's ``acceptance_rate``);
  ``n_x_tokens_per_cycle`` is the speedup that implies when one cycle costs 1/n of a
  plain decode step;
- ``ideal_speedup`` = n / (1 + (n-1)(1-alpha)), the steady-state model.

``--by-category`` runs each file's categories (the records' ``category`` field, e.g.
MT-Bench's writing, roleplay, reasoning, math, coding, extraction, stem, humanities) one
after another, so that each has its own counters, and adds a row per category under the
file's row (whose counts are then the categories' sums).

Wall times here run every stage in one CPU worker: they show cost, not speedup.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time


def load_prompts(path: str, limit: int | None) -> list[tuple[str, str]]:
    """(first turn, category) of every record, category "" where the record has none;
    ``limit`` takes evenly spaced records (MT-Bench is ordered by category, so the first K
    would cover only a few categories)."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    if limit and limit < len(records):
        records = [records[i * len(records) // limit] for i in range(limit)]
    return [(r["turns"][0], str(r.get("category", ""))) for r in records]


def by_category(prompts: list[tuple[str, str]]) -> dict[str, list[str]]:
    """The prompts of each category, categories in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for text, category in prompts:
        groups.setdefault(category, []).append(text)
    return groups


def write_result(result: dict, path: str | None) -> None:
    """``result`` as indented JSON at ``path`` (folders made; nothing when None)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__}


def counters(llm) -> dict:
    """vLLM's spec-decode counters plus the SPD worker's totals when reachable."""
    out = {"drafts": 0.0, "accepted": 0.0}
    for m in llm.get_metrics():
        if m.name == "vllm:spec_decode_num_draft_tokens":
            out["drafts"] += m.value
        elif m.name == "vllm:spec_decode_num_accepted_tokens":
            out["accepted"] += m.value
    try:  # in-process engine only (VLLM_ENABLE_V1_MULTIPROCESSING=0)
        totals = llm.llm_engine.engine_core.engine_core.scheduler._spd_totals
        out.update(zip(("cycles", "verified", "spd_accepted", "committed"), totals))
    except AttributeError:
        pass
    return out


# Counts that add up over runs; summarize() derives the rates from them.
COUNTS = ("prompts", "output_tokens", "drafts", "accepted", "cycles", "model_cycles", "wall_s")


def count(llm, prompts: list[str], temperature: float, max_tokens: int, n: int, seed: int) -> dict:
    """One run of ``prompts`` at ``temperature``: the COUNTS (and where ``cycles`` came from)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    before = counters(llm)
    start = time.perf_counter()
    outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    wall = time.perf_counter() - start
    after = counters(llm)
    d = {k: after[k] - before.get(k, 0) for k in after}
    drafts, accepted = int(d["drafts"]), int(d["accepted"])
    model_cycles = accepted + n * (drafts - accepted) + (n - 1) * len(prompts)
    return {"prompts": len(prompts), "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
            "drafts": drafts, "accepted": accepted,
            "cycles": int(d["cycles"]) if "cycles" in d else model_cycles,
            "cycles_source": "worker" if "cycles" in d else "model",
            "model_cycles": model_cycles, "wall_s": wall}


def combine(runs: list[dict]) -> dict:
    """The COUNTS of several runs added up (cycles_source "model" if any run's was)."""
    total = {k: sum(r[k] for r in runs) for k in COUNTS}
    total["cycles_source"] = "model" if any(r["cycles_source"] == "model" for r in runs) else "worker"
    return total


def summarize(c: dict, temperature: float, n: int) -> dict:
    """A result row: the counts ``c`` and the rates derived from them."""
    tokens, drafts, accepted, cycles = c["output_tokens"], c["drafts"], c["accepted"], c["cycles"]
    alpha = accepted / drafts if drafts else float("nan")
    return {
        "temperature": temperature, "prompts": c["prompts"], "output_tokens": tokens,
        "drafts": drafts, "accepted": accepted, "alpha": alpha,
        "cycles": cycles, "cycles_source": c["cycles_source"], "model_cycles": c["model_cycles"],
        "tokens_per_cycle": tokens / cycles if cycles else float("nan"),
        "n_x_tokens_per_cycle": n * tokens / cycles if cycles else float("nan"),
        "ideal_speedup": n / (1 + (n - 1) * (1 - alpha)) if drafts else float("nan"),
        "wall_s": round(c["wall_s"], 2), "output_tok_per_s": round(tokens / c["wall_s"], 1) if c["wall_s"] else 0.0,
    }


def measure(llm, prompts: list[tuple[str, str]], temperature: float, max_tokens: int, n: int, seed: int,
            split: bool = False) -> dict:
    """One file's row at ``temperature``. ``split``: each category runs on its own (so its
    counters are its own) and the row also holds ``categories``: category -> row."""
    if not split:
        return summarize(count(llm, [p for p, _ in prompts], temperature, max_tokens, n, seed), temperature, n)
    runs = {c: count(llm, texts, temperature, max_tokens, n, seed) for c, texts in by_category(prompts).items()}
    row = summarize(combine(list(runs.values())), temperature, n)
    row["categories"] = {c: summarize(r, temperature, n) for c, r in runs.items()}
    return row


def head_summary(head: str | None) -> dict | None:
    if not head:
        return None
    from vllm_spd import checkpoint

    cfg = checkpoint.read_config(head)
    prov = cfg.provenance
    return {"path": os.path.abspath(head), "trained": cfg.trained, "anchors": cfg.anchors,
            "draft_layers": cfg.num_draft_layers, "draft_vocab_size": cfg.draft_vocab_size,
            "final_eval_accuracy": prov.get("final_eval_accuracy"), "train_examples": prov.get("train_examples"),
            "steps": prov.get("steps")}


def print_table(result: dict) -> None:
    n = result["num_stages"]
    print(f"\nSPD n={n}, drafter={result['drafter']}, max_tokens={result['max_tokens']}, "
          f"target={os.path.basename(result['target'].rstrip('/'))}")
    head = ("file", "T", "prompts", "tokens", "alpha", "tok/cycle", f"{n}*tok/cycle", "ideal", "wall s")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in result["results"]:
        rows = [(r["file"], r)] + [(f"{r['file']}: {c or '(none)'}", cr) for c, cr in r.get("categories", {}).items()]
        for name, x in rows:
            print(f"| {name} | {x['temperature']:g} | {x['prompts']} | {x['output_tokens']} | {x['alpha']:.3f} | "
                  f"{x['tokens_per_cycle']:.3f} | {x['n_x_tokens_per_cycle']:.2f} | {x['ideal_speedup']:.2f} | "
                  f"{x['wall_s']:.0f} |")


def plot_categories(result: dict, path: str) -> str | None:
    """A PNG beside the result JSON (``x.json`` -> ``x.png``): alpha per prompt category,
    one group of bars per file and temperature. Returns its path; None without
    categories or without matplotlib (``pip install .[bench]``)."""
    rows = [r for r in result["results"] if r.get("categories")]
    if not rows:
        return None
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no category plot (pip install '.[bench]')")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(max(4.0, 0.7 * max(len(r["categories"]) for r in rows) + 1.5)
                                                     * len(rows), 4.2), squeeze=False)
    for ax, r in zip(axes[0], rows):
        names = [c or "(none)" for c in r["categories"]]
        alphas = [c["alpha"] for c in r["categories"].values()]
        ax.bar(names, alphas, color="tab:blue")
        ax.axhline(r["alpha"], color="dimgray", linestyle="--", linewidth=1, label=f"all: {r['alpha']:.3f}")
        ax.set_ylim(0, 1)
        ax.set_ylabel("alpha (accepted / drafts)")
        ax.set_title(f"{r['file']}, T={r['temperature']}", fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        ax.legend(fontsize=8)
    head = result.get("head") or {}
    fig.suptitle(f"{os.path.basename(result['target'])}, n={result['num_stages']}, drafter {result['drafter']}"
                 + (f" (head {os.path.basename(head.get('path', ''))})" if head else ""), fontsize=9)
    fig.tight_layout()
    out = os.path.splitext(path)[0] + ".png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> dict:
    for key, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                       "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
        os.environ.setdefault(key, value)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="target model directory")
    p.add_argument("--head", default=None, help="draft head directory (default: the default head location)")
    p.add_argument("--drafter", choices=["head", "ngram", "hybrid"], default="head")
    p.add_argument("--num-stages", type=int, required=True)
    p.add_argument("--hybrid-min-match", type=int, default=None,
                   help="hybrid: shortest suffix match for which prompt lookup drafts instead of the head")
    p.add_argument("--hybrid-max-temperature", type=float, default=None,
                   help="hybrid: highest temperature at which prompt lookup still drafts (default 0: greedy only)")
    p.add_argument("--prompts", nargs="+", required=True, help="JSONL files with {'turns': [...]}")
    p.add_argument("--temperature", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="evenly spaced prompts per file")
    p.add_argument("--by-category", action="store_true",
                   help="run each file's categories (the records' 'category' field) one after another and "
                        "report alpha per category beside the file's total")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="vLLM's share of GPU memory (lower it when other jobs share the GPU)")
    p.add_argument("--out", required=True, help="result JSON")
    a = p.parse_args(argv)
    if a.drafter == "ngram" and a.head:
        p.error("--drafter ngram takes no --head")

    from vllm import LLM, __version__ as vllm_version

    spec = {"method": "spd", "num_stages": a.num_stages, "drafter": a.drafter}
    if a.head:
        spec["model"] = a.head
    if a.hybrid_min_match is not None:
        if a.drafter != "hybrid":
            p.error("--hybrid-min-match needs --drafter hybrid")
        spec["hybrid_min_match"] = a.hybrid_min_match
    if a.hybrid_max_temperature is not None:
        if a.drafter != "hybrid":
            p.error("--hybrid-max-temperature needs --drafter hybrid")
        spec["hybrid_max_temperature"] = a.hybrid_max_temperature
    start = time.perf_counter()
    llm = LLM(model=a.target, dtype="float32", enforce_eager=True, max_model_len=a.max_model_len, seed=a.seed,
              speculative_config=spec, disable_log_stats=False, gpu_memory_utilization=a.gpu_memory_utilization)
    head = llm.llm_engine.vllm_config.speculative_config.model if a.drafter != "ngram" else None
    result = {"target": os.path.abspath(a.target), "drafter": a.drafter,
              "hybrid_min_match": spec.get("hybrid_min_match"),
              "hybrid_max_temperature": spec.get("hybrid_max_temperature"), "head": head_summary(head),
              "num_stages": a.num_stages, "max_tokens": a.max_tokens, "limit": a.limit, "by_category": a.by_category,
              "dtype": "float32",
              "vllm": vllm_version, "hardware": hardware(), "results": []}
    for path in a.prompts:
        prompts = load_prompts(path, a.limit)
        for t in a.temperature:
            r = measure(llm, prompts, t, a.max_tokens, a.num_stages, a.seed, split=a.by_category)
            result["results"].append({"file": os.path.basename(path), **r})
    result["wall_s_total"] = round(time.perf_counter() - start, 1)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    write_result(result, a.out)
    print_table(result)
    print(f"wrote {a.out} ({result['wall_s_total']:.0f} s)")
    png = plot_categories(result, a.out)
    if png:
        print(f"wrote {png}")
    return result


if __name__ == "__main__":
    main()
