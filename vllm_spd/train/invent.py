"""Prompts the target invents: ``python -m vllm_spd.train.invent --target DIR --num N --out FILE``.

A chat model that is given its chat template up to the start of a user message (the
system turn, then the user header) continues with a user message: a question or task
of the kind it was tuned on. Sampling that continuation many times yields varied,
natural prompts with nothing but the target (the same idea as Magpie, Xu et al. 2024).
Answered by the target itself (``vllm_spd.train.data``), they make training data whose
questions are not limited to hand-written templates, which is what a draft head needs
to do well on prompts unlike its training set.

Prompts are cleaned (whitespace trimmed, template markers or empty/short ones dropped,
length capped) and deduplicated (case and whitespace folded); sampling goes on in rounds
until ``num`` distinct prompts are found or a round adds too few new ones. Every request
gets its own seed (``seed + i``), so a run is reproducible. Output lines are
``{"turns": [prompt], "category": "invented"}``, the format ``vllm_spd.train.prompts``
writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from vllm_spd.train import openers as openers_mod
from vllm_spd.train.data import add_engine_args, engine_kwargs, prompt_key, start_engine, write_records

logger = logging.getLogger("vllm_spd.train")

_PROBE = "SPDQUERYPROBEXQZ"


def query_prefix(tokenizer, template_kwargs: dict | None = None) -> str:
    """The chat-rendered text that precedes a user message's content in a
    conversation's first user turn (system turn and user header included)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the target's tokenizer has no chat template: cannot invent prompts "
                         "(give a prompts file instead)")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _PROBE}], tokenize=False,
                                         add_generation_prompt=False, **(template_kwargs or {}))
    at = text.find(_PROBE)
    if at < 0:
        raise ValueError("the chat template does not render the user message's content")
    return text[:at]


def clean_prompt(text: str, markers=(), min_chars: int = 12, max_chars: int = 1500) -> str | None:
    """``text`` trimmed, or None when it is too short, too long or holds a template
    marker (a special token's text: the model ran on into another turn)."""
    text = text.strip()
    if len(text) < min_chars or len(text) > max_chars:
        return None
    if any(m and m in text for m in markers):
        return None
    return text


def invent_prompts(target: str, num: int, *, temperature: float = 1.0, top_p: float = 0.95,
                   max_tokens: int = 256, seed: int = 0, template_kwargs: dict | None = None,
                   max_rounds: int = 8, llm=None, tokenizer=None, exclude=(), openers=None,
                   **llm_kwargs) -> list[dict]:
    """``num`` distinct prompts sampled from the target (see the module docstring).

    ``llm``: an existing ``vllm.LLM`` (or anything with the same ``generate``), else one
    is built for ``target`` and released. ``exclude``: texts that must not be returned
    (e.g. evaluation prompts). ``openers``: ``(category, opener)`` pairs
    (``vllm_spd.train.openers``); each request then starts its message with one, drawn
    by its seed, and the prompt is the opener plus what the target wrote after it.
    Raises when the target gives fewer than ``num``.
    """
    if num <= 0:
        return []
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(target)
    prefix = query_prefix(tokenizer, template_kwargs)
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    from vllm_spd.train.vocab import end_of_turn_ids

    stops = end_of_turn_ids(tokenizer, None, template_kwargs)
    markers = [t for t in (getattr(tokenizer, "all_special_tokens", None) or []) if len(t) > 1]
    from vllm import SamplingParams

    own = llm is None
    if own:
        llm = start_engine(target, seed, **llm_kwargs)
    seen = {prompt_key(t) for t in exclude}
    found: list[str] = []
    issued = 0
    try:
        for rnd in range(max_rounds):
            want = num - len(found)
            batch = max(8, int(want * 1.25) + 1)
            seeds = [seed + issued + i for i in range(batch)]
            params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                     seed=s, stop_token_ids=stops, skip_special_tokens=True) for s in seeds]
            starts = [openers_mod.draw(openers, s) if openers else ("invented", "") for s in seeds]
            outs = llm.generate([{"prompt_token_ids": list(prefix_ids) + opener_ids(tokenizer, op)}
                                 for _, op in starts], params, use_tqdm=False)
            issued += batch
            added = 0
            for (cat, op), out in zip(starts, outs):
                comp = out.outputs[0]
                if comp.finish_reason != "stop":     # cut by max_tokens: not a whole message
                    continue
                if op and len(comp.text.strip()) < 3:  # the opener alone is no prompt
                    continue
                text = clean_prompt(op + comp.text, markers)
                key = prompt_key(text) if text is not None else None
                if key is None or key in seen:
                    continue
                seen.add(key)
                found.append((text, cat if cat == "invented" else f"invented/{cat}"))
                added += 1
                if len(found) >= num:
                    break
            logger.info("invent round %d: %d samples, %d new prompts, %d/%d", rnd, batch, added, len(found), num)
            if len(found) >= num:
                break
            if added < max(1, batch // 50):
                break
    finally:
        if own:
            del llm
            from vllm_spd.train.data import release_vllm

            release_vllm()
    if len(found) < num:
        raise RuntimeError(f"the target invented only {len(found)} distinct prompts of the {num} asked "
                           f"({issued} samples): ask for fewer, or raise --temperature")
    return [{"turns": [t], "category": cat} for t, cat in found[:num]]


def opener_ids(tokenizer, opener: str) -> list[int]:
    return tokenizer.encode(opener, add_special_tokens=False) if opener else []


def excluded_texts(paths) -> list[str]:
    """Every user turn of the prompt files ``paths`` (``exclude`` for ``invent_prompts``)."""
    from vllm_spd.train.data import read_prompts

    return [t for path in paths for turns in read_prompts(path) for t in turns if isinstance(t, str)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vllm_spd.train.invent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="target model directory (a chat model)")
    p.add_argument("--num", type=int, required=True, help="distinct prompts to write")
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=256, help="longest prompt, in tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude", nargs="*", default=[],
                   help="prompt files (JSONL) whose prompts must not be written, e.g. evaluation sets")
    p.add_argument("--chat-template-kwargs", type=json.loads, default=None)
    p.add_argument("--openers", default="none", metavar="builtin|none|FILE",
                   help="start every invented message with an opener drawn from this list, to spread the "
                        "prompts over task kinds (vllm_spd.train.openers; FILE: one opener a line)")
    add_engine_args(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    prompts = invent_prompts(a.target, a.num, temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_tokens,
                             seed=a.seed, template_kwargs=a.chat_template_kwargs,
                             exclude=excluded_texts(a.exclude), openers=openers_mod.resolve(a.openers),
                             **engine_kwargs(a))
    write_records(a.out, prompts)
    print(json.dumps({"out": os.path.abspath(a.out), "prompts": len(prompts)}))


if __name__ == "__main__":
    main()
