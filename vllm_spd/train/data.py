"""Training data: conversations -> token ids + assistant mask; target-generated data.

Input records (JSONL, one per line, or parquet with the same columns):

- ``{"messages": [{"role": ..., "content": ...}, ...]}`` (also ``"conversations"`` with
  ShareGPT's ``{"from": "human"|"gpt", "value": ...}``);
- ``{"turns": [...]}``: strings alternating user/assistant (starting with user), or
  role/content dicts (in a *prompts* file, ``turns`` strings are all user turns, as in
  MT-Bench);
- ``{"prompt": ..., "response": ...}`` (optional ``"system"``).

Tokenisation renders the whole conversation with the target's chat template and marks
the tokens of every assistant message's content plus the end-of-turn token that follows
it (the head must learn to draft it): those are the positions the loss trains on.

Generation (``generate_conversations``): prompts answered by the target itself through
vLLM's offline ``LLM``, so a head can be trained with nothing but the target (and the
training data matches what the target actually says, unlike dataset text).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

logger = logging.getLogger("vllm_spd.train")

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "model": "assistant", "bot": "assistant", "system": "system", "tool": "tool"}


class DataError(ValueError):
    pass


# ---- reading ------------------------------------------------------------------------

def _message(m) -> dict:
    if isinstance(m, dict):
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if role is None or content is None:
            raise DataError(f"message without role/content: {m!r}")
        role = _ROLES.get(str(role).lower(), str(role))
        return {"role": role, "content": content if isinstance(content, str) else str(content)}
    raise DataError(f"message must be an object, got {type(m).__name__}")


def normalize_record(rec: dict) -> list[dict]:
    """Messages ``[{"role", "content"}, ...]`` of one record in any accepted format."""
    if not isinstance(rec, dict):
        raise DataError(f"record must be an object, got {type(rec).__name__}")
    if rec.get("messages") is not None or rec.get("conversations") is not None:
        raw = rec.get("messages") if rec.get("messages") is not None else rec["conversations"]
        return [_message(m) for m in raw]
    if rec.get("turns") is not None:
        turns = list(rec["turns"])
        if all(isinstance(t, str) for t in turns):
            msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        else:
            msgs = [_message(t) for t in turns]
        if rec.get("system"):
            msgs.insert(0, {"role": "system", "content": rec["system"]})
        return msgs
    if "prompt" in rec:
        msgs = [{"role": "system", "content": rec["system"]}] if rec.get("system") else []
        msgs.append({"role": "user", "content": str(rec["prompt"])})
        if rec.get("response") is not None:
            msgs.append({"role": "assistant", "content": str(rec["response"])})
        return msgs
    raise DataError(f"record has none of messages/conversations/turns/prompt: keys {sorted(rec)}")


def read_records(path: str) -> list[dict]:
    """Raw records of a ``.jsonl``/``.json`` or ``.parquet`` file."""
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading parquet needs pyarrow, which is not installed "
                            "(convert the file to JSONL, or install pyarrow)") from None
        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            doc = json.load(f)
            return doc if isinstance(doc, list) else [doc]
        out = []
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not JSON ({e})") from None
        return out


def read_conversations(paths: Sequence[str]) -> list[list[dict]]:
    """Conversations (lists of messages) from every file; records with no assistant
    message are skipped."""
    convs = []
    for path in paths:
        for i, rec in enumerate(read_records(path)):
            try:
                msgs = normalize_record(rec)
            except DataError as e:
                raise DataError(f"{path}: record {i}: {e}") from None
            if any(m["role"] == "assistant" and m["content"] for m in msgs):
                convs.append(msgs)
    return convs


def read_prompts(path: str) -> list[list[str] | list[dict]]:
    """Prompts to answer: each entry is the list of user turns to ask in order (a
    record's ``turns`` strings, a ``prompt``, or the user messages of ``messages``
    before its first assistant answer, keeping a system message)."""
    out = []
    for i, rec in enumerate(read_records(path)):
        if isinstance(rec, str):
            out.append([rec])
        elif isinstance(rec, dict) and isinstance(rec.get("turns"), list) \
                and all(isinstance(t, str) for t in rec["turns"]):
            out.append(list(rec["turns"]))   # MT-Bench style: every turn is a user turn
        elif isinstance(rec, dict) and "prompt" in rec:
            out.append(([{"role": "system", "content": rec["system"]}] if rec.get("system") else [])
                       + [str(rec["prompt"])])
        else:
            msgs = normalize_record(rec)
            first = next((j for j, m in enumerate(msgs) if m["role"] == "assistant"), len(msgs))
            head = [m for m in msgs[:first] if m["role"] == "system"]
            users = [m["content"] for m in msgs if m["role"] == "user"]
            if not users:
                raise DataError(f"{path}: record {i} has no user turn")
            out.append(head + users)
    return out


# ---- tokenising ----------------------------------------------------------------------

@dataclass
class Example:
    input_ids: list[int]
    loss_mask: list[int]   # 1 on assistant tokens (content + end-of-turn)
    key: str = ""          # prompt_key of the first user turn: what the held-out split goes by


_WS = re.compile(r"\s+")


def prompt_key(text: str) -> str:
    """What two prompts must differ in to count as distinct."""
    return _WS.sub(" ", text).strip().lower()


def conversation_key(messages: list[dict]) -> str:
    """``prompt_key`` of the first user turn (of the first message when there is none)."""
    first = next((m for m in messages if m.get("role") == "user"), messages[0] if messages else None)
    return prompt_key(str(first.get("content") or "")) if first else ""


def _unit_hash(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def split_held_out(examples: Sequence[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """``(train, held_out)``, by a hash of each example's prompt: every conversation that
    shares a prompt falls on the same side, and a prompt's side depends on nothing else,
    so runs on more data, or with another seed, or started from another head (``--init``)
    hold out the same prompts. At least one prompt on each side when ``fraction > 0``
    and there are two or more prompts; with one prompt, nothing is held out."""
    u = {k: _unit_hash(k) for k in {e.key for e in examples}}  # once per prompt, not per answer
    if fraction <= 0 or len(u) < 2:
        return list(examples), []
    held = {k for k, v in u.items() if v < fraction}
    if not held:
        held = {min(u, key=u.get)}
    elif len(held) == len(u):
        held.discard(max(u, key=u.get))
    train = [e for e in examples if e.key not in held]
    return train, [e for e in examples if e.key in held]


def _assistant_spans(text: str, messages: list[dict]) -> list[tuple[int, int]]:
    """Character spans of the assistant contents inside the rendered ``text``.

    Every message's content is looked for in order after the previous one, so an
    assistant answer that repeats earlier text is not matched inside that text.
    Templates may strip whitespace or drop a ``<think>`` part; those variants are tried.
    """
    spans, cursor = [], 0
    for m in messages:
        content = m["content"]
        if not content:
            continue
        found = None
        for cand in (content, content.strip(), content.split("</think>")[-1].strip()):
            if cand and (at := text.find(cand, cursor)) >= 0:
                found = (at, at + len(cand))
                break
        if found is None:
            if m["role"] == "assistant":
                logger.debug("assistant message not found verbatim in the rendered template; skipped")
            continue
        if m["role"] == "assistant":
            spans.append(found)
        cursor = found[1]
    return spans


def tokenize_conversation(tokenizer, messages: list[dict], eot_ids: Iterable[int] = (),
                          max_length: int | None = None, template_kwargs: dict | None = None) -> Example:
    """Chat-template the conversation; mark assistant content tokens and the end-of-turn
    token right after each assistant message."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, **(template_kwargs or {}))
    spans = _assistant_spans(text, messages)
    eot = set(int(i) for i in eot_ids)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        mask = [0] * len(ids)
        for s, e in spans:
            last = None
            for i, (a, b) in enumerate(offsets):
                if a < e and b > s:
                    mask[i] = 1
                    last = i
            if last is not None and last + 1 < len(ids) and ids[last + 1] in eot:
                mask[last + 1] = 1
    else:  # tokenise piecewise at the span boundaries
        ids, mask, pos = [], [], 0
        for s, e in spans:
            for piece, flag in ((text[pos:s], 0), (text[s:e], 1)):
                if piece:
                    toks = tokenizer.encode(piece, add_special_tokens=False)
                    if flag == 0 and mask and mask[-1] == 1 and toks and toks[0] in eot:
                        ids.append(toks[0])
                        mask.append(1)
                        toks = toks[1:]
                    ids += toks
                    mask += [flag] * len(toks)
            pos = e
        tail = tokenizer.encode(text[pos:], add_special_tokens=False) if text[pos:] else []
        if tail and mask and mask[-1] == 1 and tail[0] in eot:
            ids.append(tail[0])
            mask.append(1)
            tail = tail[1:]
        ids += tail
        mask += [0] * len(tail)
    if max_length is not None and len(ids) > max_length:
        ids, mask = ids[:max_length], mask[:max_length]
    return Example(ids, mask)


def tokenize_all(tokenizer, conversations: list[list[dict]], eot_ids: Iterable[int] = (),
                 max_length: int | None = None, template_kwargs: dict | None = None,
                 min_trained: int = 1) -> list[Example]:
    """Tokenise conversations, keeping those with at least ``min_trained`` trained
    positions (an assistant token that has a predecessor)."""
    eot = list(eot_ids)
    out = []
    for msgs in conversations:
        ex = tokenize_conversation(tokenizer, msgs, eot, max_length, template_kwargs)
        ex.key = conversation_key(msgs)
        if sum(ex.loss_mask[1:]) >= min_trained:
            out.append(ex)
    return out


def collate(examples: Sequence[Example], pad_id: int = 0, round_length=None):
    """Right-padded ``input_ids``, ``valid`` (attention) and ``loss_mask``, each [B, S];
    ``round_length(longest)`` gives S when set (e.g. a multiple of a kernel's tile)."""
    import torch

    S = max(len(e.input_ids) for e in examples)
    S = round_length(S) if round_length is not None else S
    B = len(examples)
    ids = torch.full((B, S), pad_id, dtype=torch.long)
    valid = torch.zeros(B, S, dtype=torch.bool)
    lmask = torch.zeros(B, S, dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        valid[i, :n] = True
        lmask[i, :n] = torch.tensor(e.loss_mask, dtype=torch.bool)
    return ids, valid, lmask


# ---- generation with the target ------------------------------------------------------

def generate_conversations(target: str, prompts: list, *, num: int | None = None,
                           temperature: float = 0.0, top_p: float = 1.0, max_tokens: int = 1024,
                           seed: int = 0, template_kwargs: dict | None = None, llm=None,
                           sampling_params=None, **llm_kwargs) -> list[list[dict]]:
    """Answer ``prompts`` (entries of ``read_prompts``) with the target through vLLM.

    Multi-turn prompts are answered turn by turn, each answer appended before the next
    user turn. ``temperature == 0`` is greedy. ``llm``: an existing ``vllm.LLM`` (or
    anything with the same ``chat``), else one is built for ``target`` and released;
    ``sampling_params`` overrides the ``vllm.SamplingParams`` built from the arguments.
    """
    prompts = list(prompts)[: num] if num else list(prompts)
    convs: list[list[dict]] = []
    users: list[list[str]] = []
    for p in prompts:
        system = [m for m in p if isinstance(m, dict)]
        convs.append([dict(m) for m in system])
        users.append([t for t in p if isinstance(t, str)])
    params = sampling_params
    if params is None:
        from vllm import SamplingParams

        params = SamplingParams(temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                max_tokens=max_tokens, seed=seed)
    own = llm is None
    if own:
        llm = start_engine(target, seed, **llm_kwargs)
    try:
        for k in range(max((len(u) for u in users), default=0)):
            todo = [i for i, u in enumerate(users) if k < len(u)]
            for i in todo:
                convs[i].append({"role": "user", "content": users[i][k]})
            outs = llm.chat([convs[i] for i in todo], params, use_tqdm=True,
                            chat_template_kwargs=template_kwargs)
            for i, out in zip(todo, outs):
                convs[i].append({"role": "assistant", "content": out.outputs[0].text})
    finally:
        if own:
            del llm
            release_vllm()
    return convs


# An engine that fails to start is started again (start_engine).
ENGINE_START_TRIES = 3
ENGINE_RETRY_WAIT_S = 20.0


def start_engine(target: str, seed: int, **llm_kwargs):
    """A ``vllm.LLM`` for ``target``. An engine whose core fails to start is started again,
    up to ENGINE_START_TRIES times, ENGINE_RETRY_WAIT_S apart: with several engines (or a
    training) on one GPU, vLLM's start-up memory profile fails when another process frees
    GPU memory while it measures ("Error in memory profiling"), which a later start does
    not meet. Other errors, and the last try's, are raised as they are."""
    from vllm import LLM

    for attempt in range(1, ENGINE_START_TRIES + 1):
        try:
            return LLM(model=target, seed=seed, **llm_kwargs)
        except RuntimeError as e:
            if attempt == ENGINE_START_TRIES or "initialization failed" not in str(e):
                raise
            logger.warning("vLLM engine for %s failed to start (%s); try %d of %d in %.0f s", target, e,
                           attempt + 1, ENGINE_START_TRIES, ENGINE_RETRY_WAIT_S)
            release_vllm()
            time.sleep(ENGINE_RETRY_WAIT_S)


def release_vllm() -> None:
    import gc

    gc.collect()
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception:  # best effort: nothing to tear down
        pass
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def write_records(path: str, records: Iterable[dict]) -> None:
    """One JSON record per line; the file appears only once it is complete (written
    beside it, then renamed), so a file that exists is never a partial one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_jsonl(path: str, conversations: list[list[dict]], meta: dict | None = None) -> None:
    write_records(path, ({"messages": msgs, **(meta or {})} for msgs in conversations))


def add_engine_args(p) -> None:
    """The vLLM engine options of the generation CLIs (``engine_kwargs`` reads them)."""
    p.add_argument("--dtype", default="auto")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="vLLM's share of the GPU (lower it to run several engines on one GPU)")
    p.add_argument("--max-num-seqs", type=int, default=None,
                   help="vLLM's batch limit (default vLLM's); a small target generates faster with more")


def engine_kwargs(a) -> dict:
    out = {"dtype": a.dtype, "gpu_memory_utilization": a.gpu_memory_utilization}
    if a.max_num_seqs:
        out["max_num_seqs"] = a.max_num_seqs
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m vllm_spd.train.data --target DIR --prompts FILE --out FILE``: only the
    generation step (the trainer's ``--generate-from`` does the same into OUT)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m vllm_spd.train.data", description=main.__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--prompts", required=True, help="JSONL: prompt / turns (user turns) / messages")
    p.add_argument("--out", required=True, help="JSONL of conversations to write")
    p.add_argument("--num", type=int, default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat-template-kwargs", type=json.loads, default=None)
    add_engine_args(p)
    a = p.parse_args(argv)
    convs = generate_conversations(a.target, read_prompts(a.prompts), num=a.num, temperature=a.temperature,
                                   top_p=a.top_p, max_tokens=a.max_tokens, seed=a.seed,
                                   template_kwargs=a.chat_template_kwargs, **engine_kwargs(a))
    write_jsonl(a.out, convs, {"source": "target", "target": os.path.abspath(a.target)})
    print(json.dumps({"out": os.path.abspath(a.out), "conversations": len(convs)}))


if __name__ == "__main__":
    main()
