"""What a request's sampling parameters do to the target's logits beyond the warps
``verify`` applies, and the logprobs it asks for.

A draft for position ``p`` is verified only once every token before ``p`` is committed,
so everything that depends on earlier output is known exactly at verification: the
penalties' token counts, the bad-word prefixes. The rules below are applied to the
target's logits there (and to the prefill's first token), in the order of vLLM 0.32's
``Sampler.apply_logits_processors``:

1. allowed_token_ids: every other token masked;
2. bad words: the last token of a bad word masked where the committed output ends
   with the rest of it (vLLM's ``apply_bad_words``);
3. min_tokens (applied by the caller, see ``CommitGate``), then logit_bias added;
4. repetition, frequency and presence penalties over prompt and committed output
   (vLLM's ``apply_all_penalties``).

Temperature, min-p, top-k and top-p follow in ``verify``. Logprobs are vLLM's: the
top ``k`` and the committed token's, with its rank, from the raw logits
(``raw_logprobs``, vLLM's default, or ``raw_logits``) or from the processed ones
(``processed_*``: after the rules, and for sampled rows after the warps too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TargetRules:
    """One request's rules and logprob settings; built only where something applies."""

    allowed: list[int] | None
    bad_words: list[list[int]]
    logit_bias: dict[int, float]
    presence: float
    frequency: float
    repetition: float
    prompt_ids: list[int]
    #: sample logprobs per committed token (-1: the whole vocabulary), None: none
    num_logprobs: int | None
    #: structured output: vLLM's grammar masks the target at the committed frontier
    grammar: bool = False
    #: logprob_token_ids: these tokens' logprobs instead of the top ones
    logprob_ids: list[int] | None = None

    @classmethod
    def from_params(cls, sp, prompt_ids) -> "TargetRules | None":
        rules = cls(allowed=list(sp.allowed_token_ids) if sp.allowed_token_ids else None,
                    bad_words=[list(w) for w in (sp.bad_words_token_ids or ())],
                    logit_bias={int(k): float(v) for k, v in (sp.logit_bias or {}).items()},
                    presence=float(sp.presence_penalty or 0.0), frequency=float(sp.frequency_penalty or 0.0),
                    repetition=float(sp.repetition_penalty if sp.repetition_penalty is not None else 1.0),
                    prompt_ids=list(prompt_ids or ()), num_logprobs=sp.logprobs,
                    grammar=sp.structured_outputs is not None,
                    logprob_ids=list(sp.logprob_token_ids) if sp.logprob_token_ids else None)
        return rules if rules.shapes_logits or rules.wants_logprobs or rules.grammar else None

    @property
    def wants_logprobs(self) -> bool:
        return self.num_logprobs is not None or self.logprob_ids is not None

    @property
    def penalized(self) -> bool:
        return self.presence != 0.0 or self.frequency != 0.0 or self.repetition != 1.0

    @property
    def shapes_logits(self) -> bool:
        """Whether the rules change the target distribution (logprobs alone do not)."""
        return bool(self.allowed is not None or self.bad_words or self.logit_bias or self.penalized)


def apply_rules(logits: torch.Tensor, rules: list[TargetRules | None], outputs: list[list[int]]) -> None:
    """Apply each row's rules to ``logits`` [R, V] (float32, in place); ``outputs[r]`` is
    row r's committed output so far. Rows with None are left alone."""
    from vllm.v1.sample.ops.bad_words import apply_bad_words
    from vllm.v1.sample.ops.penalties import apply_all_penalties

    rows = [r for r, x in enumerate(rules) if x is not None and x.shapes_logits]
    if not rows:
        return
    vocab = logits.shape[1]
    dev = logits.device
    for r in rows:
        x = rules[r]
        if x.allowed is not None:
            keep = torch.zeros(vocab, dtype=torch.bool, device=dev)
            keep[torch.tensor(x.allowed, dtype=torch.int64, device=dev)] = True
            logits[r].masked_fill_(~keep, float("-inf"))
    bad = {r: rules[r].bad_words for r in rows if rules[r].bad_words}
    if bad:
        apply_bad_words(logits, bad, outputs)
    for r in rows:
        x = rules[r]
        if x.logit_bias:
            ids = torch.tensor(list(x.logit_bias), dtype=torch.int64, device=dev)
            logits[r, ids] += torch.tensor(list(x.logit_bias.values()), dtype=logits.dtype, device=dev)
    pen = [r for r in rows if rules[r].penalized]
    if pen:
        from vllm.utils.torch_utils import make_tensor_with_pad

        sub = logits[pen]
        prompts = make_tensor_with_pad([rules[r].prompt_ids for r in pen], pad=vocab, device=dev, dtype=torch.int64)

        def col(name):
            return torch.tensor([getattr(rules[r], name) for r in pen], dtype=torch.float32, device=dev)

        sub = apply_all_penalties(sub, prompts, col("presence"), col("frequency"), col("repetition"),
                                  [outputs[r] for r in pen])
        logits[pen] = sub


def logprob_scores(raw: torch.Tensor, processed: torch.Tensor | None, mode: str, warp: dict | None) -> torch.Tensor:
    """The scores vLLM's sampler reports under ``mode`` (``LogprobsMode``), [R, V] float32.

    ``raw``: the logits before any rule; ``processed``: after the rules and min_tokens
    (None: the same as ``raw``); ``warp``: ``verify.warp_logits``'s keyword arguments for
    the rows (greedy rows are not warped, as in a batch of greedy rows in vLLM)."""
    from vllm_spd.core import verify

    if mode.startswith("raw"):
        x = raw.float()
    else:
        x = (raw if processed is None else processed).float()
        if warp is not None:
            warped = verify.warp_logits(x, **warp)
            greedy = verify.greedy_mask(warp["temperature"]).unsqueeze(1)
            x = torch.where(greedy, x, warped)
    return x if mode.endswith("logits") else x.log_softmax(dim=-1)


def gather(scores: torch.Tensor, num_logprobs: int, tokens: torch.Tensor):
    """vLLM's own gather of the top ``num_logprobs`` and each row's token (with its rank):
    ``(ids [R, k+1] int32, logprobs [R, k+1], ranks [R])``."""
    from vllm.v1.sample.sampler import Sampler

    k = scores.shape[1] if num_logprobs == -1 else num_logprobs
    ids, lps, ranks = Sampler.gather_logprobs(scores, k, tokens.to(torch.int64))[:3]
    return ids, lps, ranks
