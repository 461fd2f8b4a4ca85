"""The draft vocabulary: which K full-vocabulary ids the draft head can propose.

The K most frequent tokens of the training data (by default only the tokens the head
learns to predict, i.e. assistant tokens), ties broken by the lower id, plus the
chat template's end-of-turn / EOS tokens, which are always kept (a draft vocabulary
that cannot propose end-of-turn stalls every answer's last cycle). Ids are returned
sorted, as the head checkpoint stores them (``draft_token_ids``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def count_tokens(sequences: Iterable, vocab_size: int, masks: Iterable | None = None) -> np.ndarray:
    """Token frequencies ``[vocab_size]`` over ``sequences`` (only where ``mask`` is 1
    when ``masks`` is given)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    masks = iter(masks) if masks is not None else None
    for seq in sequences:
        ids = np.asarray(seq, dtype=np.int64)
        if masks is not None:
            ids = ids[np.asarray(next(masks), dtype=bool)]
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"token id outside [0, {vocab_size})")
        counts += np.bincount(ids, minlength=vocab_size)
    return counts


def select_draft_vocab(counts: np.ndarray, size: int | None, always: Iterable[int] = ()) -> torch.Tensor:
    """Sorted int64 ids: ``always`` plus the most frequent others up to ``size`` ids.

    ``size`` None/0 or >= the vocabulary gives the full vocabulary. Ties (including
    unseen tokens, count 0) go to the lower id.
    """
    V = int(counts.shape[0])
    if not size or size >= V:
        return torch.arange(V, dtype=torch.int64)
    forced = sorted({int(i) for i in always if 0 <= int(i) < V})
    if len(forced) > size:
        raise ValueError(f"draft vocabulary of {size} cannot hold the {len(forced)} required tokens {forced}")
    order = np.lexsort((np.arange(V), -counts))       # by count desc, then id asc
    chosen = set(forced)
    for i in order:
        if len(chosen) >= size:
            break
        chosen.add(int(i))
    return torch.tensor(sorted(chosen), dtype=torch.int64)


def token_to_draft_index(draft_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[vocab_size]`` int64: draft index of each full-vocab id, -1 if absent."""
    table = torch.full((vocab_size,), -1, dtype=torch.int64, device=draft_ids.device)
    table[draft_ids] = torch.arange(draft_ids.numel(), device=draft_ids.device)
    return table


def in_draft_vocab(draft_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[vocab_size]`` bool: whether each full-vocab id is a draft token."""
    return token_to_draft_index(draft_ids, vocab_size) >= 0


def to_draft(token_ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Map full-vocab ids (any shape) through ``token_to_draft_index``'s table."""
    return table[token_ids]


def coverage(counts: np.ndarray, draft_ids: torch.Tensor) -> float:
    """Fraction of the counted token mass that the draft vocabulary covers."""
    total = counts.sum()
    return float(counts[draft_ids.cpu().numpy()].sum() / total) if total else 1.0


def end_of_turn_ids(tokenizer, extra_eos: Iterable[int] | int | None = None,
                    template_kwargs: dict | None = None) -> list[int]:
    """EOS ids (tokenizer's, plus ``extra_eos``, e.g. generation_config's) and the token
    the chat template writes right after an assistant message (``<|im_end|>``,
    ``<|eot_id|>``...), when that token is a special/added one."""
    ids: set[int] = set()
    if isinstance(extra_eos, int):
        extra_eos = [extra_eos]
    for i in list(extra_eos or []) + [getattr(tokenizer, "eos_token_id", None)]:
        if i is not None:
            ids.add(int(i))
    if getattr(tokenizer, "chat_template", None):
        probe = "SPDPROBEXQZ"
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}],
                tokenize=False, **(template_kwargs or {}))
        except Exception:  # a template that rejects this conversation: keep the EOS ids
            text = ""
        at = text.rfind(probe)
        if at >= 0:
            suffix = tokenizer.encode(text[at + len(probe):], add_special_tokens=False)
            special = set(getattr(tokenizer, "all_special_ids", []) or [])
            special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
            if suffix and suffix[0] in special:
                ids.add(int(suffix[0]))
    return sorted(ids)
