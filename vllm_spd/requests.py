"""Per-request checks: sampling features SPD cannot honour losslessly yet.

SPD verifies each draft against the target distribution after everything vLLM's sampler
applies: a structured output's grammar mask, allowed tokens, bad words, min_tokens, logit
bias, penalties (``target_rules``), then temperature, min-p, top-k and top-p; it returns
sample and prompt logprobs as vLLM does. What is left is refused when the request
arrives, with a message naming the field, so nothing running is disturbed.
"""

from __future__ import annotations

# field -> (value meaning "off", what to tell the user)
_UNSUPPORTED = {
    "thinking_token_budget": (None, "thinking_token_budget"),
}

SUPPORTED = ("temperature, top_k, top_p, min_p, seed, stop, stop_token_ids, ignore_eos, max_tokens, "
             "min_tokens, presence/frequency/repetition penalties, logit_bias, allowed_token_ids, bad_words, "
             "logprobs, logprob_token_ids, prompt_logprobs, n, structured outputs")


def unsupported_sampling_fields(params) -> list[str]:
    """Names of set fields SPD refuses, e.g. ``["thinking_token_budget"]``."""
    found = []
    for name, (off, _) in _UNSUPPORTED.items():
        value = getattr(params, name, off)
        if value is not None and value != off and value != [] and value != {}:
            found.append(name)
    return found


def check_sampling_params(params) -> None:
    """Raise vLLM's validation error (HTTP 400 in the server) naming each field."""
    from vllm.exceptions import VLLMValidationError

    fields = unsupported_sampling_fields(params)
    if fields:
        raise VLLMValidationError(
            f"speculative method 'spd' does not support {', '.join(_UNSUPPORTED[f][1] for f in fields)} yet; "
            f"supported: {SUPPORTED}", parameter=fields[0])
