"""Per-request checks: sampling features SPD cannot honour losslessly yet.

SPD verifies each draft against the target distribution after temperature, top-k,
top-p and min-p (and the min_tokens stop mask). Features that change the
distribution from tokens still in flight (penalties, bad words, grammars) or that
return per-token data SPD does not compute yet (logprobs) are refused when the
request arrives, with a message naming the field, so nothing running is disturbed.
"""

from __future__ import annotations

# field -> (value meaning "off", what to tell the user)
_UNSUPPORTED = {
    "presence_penalty": (0.0, "penalties"),
    "frequency_penalty": (0.0, "penalties"),
    "repetition_penalty": (1.0, "penalties"),
    "logit_bias": (None, "logit_bias"),
    "allowed_token_ids": (None, "allowed_token_ids"),
    "bad_words": (None, "bad_words"),
    "logprobs": (None, "logprobs"),
    "prompt_logprobs": (None, "prompt_logprobs"),
    "structured_outputs": (None, "structured outputs (guided decoding)"),
    "thinking_token_budget": (None, "thinking_token_budget"),
}


def unsupported_sampling_fields(params) -> list[str]:
    """Names of set fields SPD refuses, e.g. ``["presence_penalty"]``."""
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
            f"speculative method 'spd' does not support {', '.join(fields)} yet; "
            "supported: temperature, top_k, top_p, min_p, seed, stop, stop_token_ids, "
            "ignore_eos, max_tokens, min_tokens", parameter=fields[0])
