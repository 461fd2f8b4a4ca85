"""Hybrid drafting's choice: when prompt lookup and the head both propose, which is right?

    python benchmarks/hybrid_choice.py --target DIR --head HEAD_DIR --num-stages 4 \\
        --prompts mt_bench.jsonl humaneval.jsonl --limit 40 --max-tokens 128 --out result.json

Runs SPD with ``drafter: hybrid`` greedily (T=0) in one in-process CPU engine and records,
at every draft where prompt lookup found a match, the context, the looked-up token, the
head's argmax and the head's probabilities. After generation, a record counts where its
context is the true prefix of the greedy output (its draft is then verified), and its
truth is the next output token. Reported per file:

- ``events``: such drafts; ``head_right``, ``lookup_right``, ``both``, ``neither``;
- ``drafts``: every verified draft of the run (vLLM's counter), so that a change of
  choice on the events shows as alpha: ``(right - lookup_right) / drafts``;
- ``policies``: alpha gained over hybrid's rule (lookup whenever it matches) by choosing
  lookup only where the head's own probability of its argmax is below a threshold
  (``head_max_below``), or where the head gives the looked-up token at least a
  probability (``lookup_prob_at_least``); the best threshold of each, and the oracle
  (right whenever either is right), the ceiling of any choice.

Diagnosis only: it wraps the runner's drafting with recorders, and the draft module runs
eagerly (``VLLM_SPD_DRAFT_GRAPHS=0``) so that its logits exist on the host.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from acceptance import counters, hardware, load_prompts, write_result  # noqa: E402

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


class Recorder:
    """Wraps the draft module's greedy head and prompt lookup to keep, per drafting cycle,
    the head's probability rows and the lookups (context, result) in call order."""

    def __init__(self):
        self.probs = None      # [rows, K] of the last greedy head call
        self.lookups = []      # (context, (token, length) | None) of this cycle
        self.events = []       # (context, lookup token, head token, head max prob, head prob of lookup)

    def install(self):
        import torch

        from vllm_spd.drafters import drafting, pdm

        rec = self
        original_match = drafting.match_ngram

        def draft_greedy(module, hidden, residual):
            logits = module.draft_logits(hidden, residual).float()
            rec.probs = torch.softmax(logits, -1)
            return module.draft_token_ids[logits.argmax(-1)]

        def match_ngram(tokens, *args, **kwargs):
            found = original_match(tokens, *args, **kwargs)
            rec.lookups.append((list(tokens), found))
            return found

        original_begin = drafting.Hybrid.begin

        def draft_begin(drafter, active, index, wants):
            launch = original_begin(drafter, active, index, wants)

            def recorded_launch():
                rec.probs, rec.lookups = None, []
                finish = launch()
                rec.collect(drafter.runner, wants)
                return finish
            return recorded_launch

        pdm.PipelineDraftModule.draft_greedy = draft_greedy
        drafting.match_ngram = match_ngram
        drafting.Hybrid.begin = draft_begin

    def collect(self, runner, wants):
        """Pairs this cycle's lookups with the head's rows: a lookup was made, in order,
        for every active request that wanted a draft (all greedy here)."""
        if self.probs is None or not self.lookups:
            return
        wanting = [row for row, w in enumerate(wants) if w]
        ids = runner.spd_pdm.draft_token_ids.tolist()
        where = {t: k for k, t in enumerate(ids)}
        for row, (context, found) in zip(wanting, self.lookups):
            if found is None:
                continue
            p = self.probs[row]
            k = int(p.argmax())
            look = int(found[0])
            p_look = float(p[where[look]]) if look in where else 0.0
            self.events.append((context, look, ids[k], float(p[k]), p_look))


def score(events, truths: dict[tuple, list[int]], drafts: int) -> dict:
    """Counts and policy gains (module docstring) of ``events`` against the outputs."""
    kept = []
    for context, look, head, p_max, p_look in events:
        for prefix, full in truths.items():
            n = len(prefix)
            if tuple(context[:n]) == prefix:
                if len(full) > len(context) and full[:len(context)] == context:
                    y = full[len(context)]
                    kept.append((look == y, head == y, p_max, p_look))
                break
    look_right = sum(lk for lk, _, _, _ in kept)
    out = {"events": len(kept), "drafts": drafts, "lookup_right": look_right,
           "head_right": sum(hd for _, hd, _, _ in kept), "both": sum(lk and hd for lk, hd, _, _ in kept),
           "neither": sum(not lk and not hd for lk, hd, _, _ in kept)}

    def gain(choose) -> float:
        right = sum(lk if choose(pm, pl) else hd for lk, hd, pm, pl in kept)
        return (right - look_right) / drafts if drafts else float("nan")

    out["policies"] = {
        "oracle": (sum(lk or hd for lk, hd, _, _ in kept) - look_right) / drafts if drafts else float("nan"),
        "head_always": gain(lambda pm, pl: False),
        "head_max_below": {f"{t:g}": gain(lambda pm, pl, t=t: pm < t) for t in THRESHOLDS},
        "lookup_prob_at_least": {f"{t:g}": gain(lambda pm, pl, t=t: pl >= t) for t in THRESHOLDS},
    }
    return out


def main(argv: list[str] | None = None) -> dict:
    for key, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1",
                       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
        os.environ.setdefault(key, value)
    os.environ["VLLM_SPD_DRAFT_GRAPHS"] = "0"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--head", required=True)
    p.add_argument("--num-stages", type=int, required=True)
    p.add_argument("--prompts", nargs="+", required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    from vllm import LLM, SamplingParams

    rec = Recorder()
    rec.install()
    llm = LLM(model=a.target, dtype="float32", enforce_eager=True, max_model_len=2048, seed=0,
              disable_log_stats=False,
              speculative_config={"method": "spd", "num_stages": a.num_stages, "drafter": "hybrid", "model": a.head})
    result = {"target": os.path.abspath(a.target), "head": os.path.abspath(a.head), "num_stages": a.num_stages,
              "max_tokens": a.max_tokens, "limit": a.limit, "temperature": 0.0, "hardware": hardware(), "results": []}
    params = SamplingParams(max_tokens=a.max_tokens, temperature=0.0)
    for path in a.prompts:
        prompts = [text for text, _ in load_prompts(path, a.limit)]
        rec.events = []
        before = counters(llm)
        outs = llm.chat([[{"role": "user", "content": t}] for t in prompts], params, use_tqdm=False)
        drafts = int(counters(llm)["drafts"] - before["drafts"])
        truths = {tuple(o.prompt_token_ids): list(o.prompt_token_ids) + list(o.outputs[0].token_ids) for o in outs}
        row = {"file": os.path.basename(path), "prompts": len(prompts), **score(rec.events, truths, drafts)}
        result["results"].append(row)
        pol = row["policies"]
        print(f"{row['file']}: {row['events']} lookup drafts of {drafts}; lookup right {row['lookup_right']}, "
              f"head right {row['head_right']}, both {row['both']}, neither {row['neither']}; alpha gain: "
              f"oracle {pol['oracle']:+.4f}, head always {pol['head_always']:+.4f}, best head_max_below "
              f"{max(pol['head_max_below'].values()):+.4f}, best lookup_prob_at_least "
              f"{max(pol['lookup_prob_at_least'].values()):+.4f}")
    llm.llm_engine.engine_core.shutdown()
    write_result(result, a.out)
    return result


if __name__ == "__main__":
    main()
