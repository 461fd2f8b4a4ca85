"""The ``method: "spd"`` speculative config: fields, defaults and validation.

vLLM builds ``SpeculativeConfig`` at exactly one place
(``EngineArgs.create_speculative_config``); the plugin routes spd dicts to
:func:`build_spd_config`, which checks everything it can before vLLM sees the dict, so
a user gets one clear ``ValueError`` naming the problem instead of a pydantic dump.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, Literal, get_args

from pydantic import Field, ValidationError
from vllm.config.speculative import SpeculativeConfig, SpeculativeMethod
from vllm.config.utils import config

from vllm_spd.core import layout

logger = logging.getLogger("vllm_spd")

#: ``num_stages`` when the speculative config does not set it.
DEFAULT_NUM_STAGES = 2
#: ``cycles_per_step`` when the speculative config does not set it (at least
#: ``2 * num_stages``). Measured on one H100 (Qwen3-8B shape, batch 1, all stages in one
#: worker): an engine step's turn-around (read-back, scheduler, next load) idles the GPU
#: about 3.9 ms, against cycles of 6.9 to 7.3 ms, so 32 cycles a step would lose under 2%
#: to it (modelled) while a step (the wait of a newly arrived request, and the streaming
#: interval) stays near 0.2 s (with 2 * num_stages, 8 cycles at n=4, it costs 7%).
DEFAULT_CYCLES_PER_STEP = 32
#: Target architectures SPD can run today (dense, full attention everywhere).
SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM", "LlamaForCausalLM")
#: Attention kinds that need state rewind on a rejected draft, which SPD lacks yet.
_RECURRENT_LAYER_TYPES = ("linear_attention", "mamba", "gated_deltanet")


@config
class SPDSpeculativeConfig(SpeculativeConfig):
    """Speculative Pipeline Decoding.

    Example: ``--speculative-config '{"method": "spd", "num_stages": 4}'``.
    """

    method: SpeculativeMethod | Literal["spd"] | None = None
    num_stages: int = Field(default=DEFAULT_NUM_STAGES, ge=1)
    """Pipeline stages the target's decoder layers are split into; tokens of one
    sequence in flight at once. With this many GPUs each stage gets its own."""
    drafter: Literal["auto", "head", "ngram", "hybrid", "oracle"] = "auto"
    """Where drafts come from. ``head``: a Pipeline Draft Module (``model`` or the
    default head location); ``ngram``: prompt lookup over the request's own tokens,
    needs no weights; ``hybrid``: the head, except where prompt lookup matches a
    suffix of at least ``hybrid_min_match`` tokens (for requests at temperature
    ``hybrid_max_temperature`` or below); ``auto``: a head when one is found,
    else ngram with a warning;
    ``oracle``: benchmark instrument, see ``oracle_tokens``; with a ``model`` (head) the
    draft module still runs every cycle, unused, so its cost is priced."""
    oracle_tokens: str | None = None
    """Benchmarks only (drafter='oracle'): JSON of recorded greedy outputs
    (``vllm_spd.drafters.oracle.save_recording``); drafts are right with probability ``oracle_alpha``."""
    oracle_alpha: float = Field(default=1.0, ge=0, le=1)
    """Per-draft acceptance the oracle drafter produces at temperature 0."""
    cycles_per_step: int | None = Field(default=None, ge=1)
    """SPD cycles one engine step may run, i.e. the most tokens a request commits per
    step (default 32, at least ``2 * num_stages``: see ``DEFAULT_CYCLES_PER_STEP``; at
    least ``num_stages`` so every step commits)."""
    stage_placement: Literal["auto", "single_worker", "pipeline"] = "auto"
    """``auto``: one stage per GPU when ``num_stages`` GPUs are visible and no
    pipeline-parallel size was set, else all stages in one worker (correct, no
    speedup). ``single_worker`` / ``pipeline`` force either."""
    stage_layers: list[int] | None = None
    """Uneven layer split, e.g. ``[10, 9, 9, 8]``; default: vLLM's pipeline split."""
    ngram_max: int = Field(default=4, ge=1)
    """Longest suffix the ngram drafter matches."""
    ngram_min: int = Field(default=1, ge=1)
    """Shortest suffix the ngram drafter matches."""
    hybrid_min_match: int = Field(default=3, ge=1)
    """``hybrid``: shortest matched suffix for which prompt lookup overrides the head."""
    hybrid_max_temperature: float = Field(default=0.0, ge=0)
    """``hybrid``: prompt lookup overrides the head only for requests sampled at this
    temperature or below; default 0: greedy requests only. A looked-up token is accepted
    with the target's probability of it, which at T=1 is often below the head's
    sum(min(p, q)): measured, lookup lowered the head's alpha at T=1 (README)."""
    log_interval_s: float = Field(default=10.0, ge=0)
    """Seconds between log lines with alpha and tokens per cycle (0 = off)."""
    verdict_lag: int | None = Field(default=None, ge=0, le=1)
    """Cycles between a token leaving the last stage and its verdict taking effect.
    0: the controller verifies, then broadcasts the cycle's drafts and verdicts, so every
    rank's next stage waits for verification. 1: the verdict is computed in the cycle
    the token leaves the last stage and takes effect in the next one, so a cycle's
    drafts and verdicts depend only on earlier cycles: no rank's next stage waits for
    this cycle's verification; a rejected draft costs one more cycle. Default: 1 with
    one stage per rank (faster on 4x H200 at every measured alpha, see README), 0 in
    one worker (where stages run one after another anyway).
    Output is exact either way; seeded sampling draws differ between the two."""

    @property
    def pipeline_depth(self) -> int:
        """Cycles from a token entering stage 0 to its verdict: ``num_stages + verdict_lag``."""
        return self.num_stages + self.verdict_lag

    def __post_init__(self):
        if self.method != "spd":
            return super().__post_init__()
        if self.verdict_lag is None:
            pp = getattr(self.target_parallel_config, "pipeline_parallel_size", 1)
            self.verdict_lag = 1 if pp > 1 else 0
        if self.cycles_per_step is None:
            self.cycles_per_step = default_cycles_per_step(self.num_stages)
        if self.cycles_per_step < self.pipeline_depth:
            raise ValueError(
                f"spd: cycles_per_step={self.cycles_per_step} must be >= num_stages + verdict_lag="
                f"{self.pipeline_depth}, or a step could end with nothing committed"
            )
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"spd: ngram_min={self.ngram_min} > ngram_max={self.ngram_max}")
        # vLLM's spec-decode contract: each step schedules 1 + k tokens per request
        # and rolls back the ones that were not accepted. SPD commits 1..C tokens per
        # step, so k = C - 1 placeholders (see scheduler.py).
        self.num_speculative_tokens = max(1, self.cycles_per_step - 1)
        # The "draft model" is the target itself, split into stages (like custom_class).
        self.draft_model_config = self.target_model_config
        self.draft_parallel_config = self.target_parallel_config

    def compute_hash(self) -> str:
        from vllm.config.utils import hash_factors

        if self.method != "spd":
            return super().compute_hash()
        return hash_factors(["spd", self.num_stages, self.model, self.stage_layers])


#: Keys a user may put in an spd speculative config.
SPD_KEYS = frozenset(
    {"method", "num_stages", "model", "drafter", "cycles_per_step", "stage_placement",
     "stage_layers", "ngram_max", "ngram_min", "log_interval_s", "num_speculative_tokens",
     "oracle_tokens", "oracle_alpha", "hybrid_min_match", "hybrid_max_temperature", "verdict_lag",
     "enforce_eager"}
)


def is_spd(spec: Any) -> bool:
    if isinstance(spec, dict):
        return spec.get("method") == "spd"
    return getattr(spec, "method", None) == "spd"


def check_keys(spec: dict[str, Any]) -> None:
    unknown = sorted(set(spec) - SPD_KEYS)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), sorted(SPD_KEYS), n=1)
            if close:
                hints.append(f"{key!r} -> {close[0]!r}" if len(unknown) > 1 else repr(close[0]))
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ValueError(
            f"spd: unknown key(s) {unknown} in speculative_config{hint}; valid keys: {sorted(SPD_KEYS)}"
        )


def check_target(hf_config: Any) -> int:
    """Refuse targets SPD cannot run; return the decoder layer count."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    model_type = getattr(hf_config, "model_type", "?")
    layer_types = getattr(hf_config, "layer_types", None) or []
    recurrent = sorted({t for t in layer_types if t in _RECURRENT_LAYER_TYPES})
    if recurrent or model_type.startswith(("qwen3_5", "qwen3_next")):
        raise ValueError(
            f"spd: target model_type={model_type!r} is a hybrid linear-attention model "
            f"(layer types {recurrent or 'linear_attention'}); SPD cannot rewind recurrent "
            "state after a rejected draft yet. Supported: " + ", ".join(SUPPORTED_ARCHITECTURES)
        )
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ValueError(
            f"spd: target architecture {archs or model_type!r} is not supported; "
            "supported: " + ", ".join(SUPPORTED_ARCHITECTURES)
        )
    return int(hf_config.num_hidden_layers)


def check_parallel(num_stages: int, pipeline_parallel_size: int, tensor_parallel_size: int) -> None:
    if pipeline_parallel_size not in (1, num_stages):
        raise ValueError(
            f"spd: pipeline_parallel_size={pipeline_parallel_size} must be 1 (all stages in "
            f"one worker) or num_stages={num_stages} (one stage per rank)"
        )
    if tensor_parallel_size != 1:
        raise ValueError(f"spd: tensor_parallel_size={tensor_parallel_size} is not supported; use 1")


def decide_pipeline_size(num_stages: int, placement: str, requested_pp: int, visible_gpus: int) -> int:
    """Pipeline-parallel size for a deployment.

    >>> decide_pipeline_size(4, "auto", 1, 4), decide_pipeline_size(4, "auto", 1, 1)
    (4, 1)
    """
    if placement == "single_worker":
        if requested_pp != 1:
            raise ValueError(
                f"spd: stage_placement='single_worker' conflicts with pipeline_parallel_size={requested_pp}"
            )
        return 1
    if placement == "pipeline":
        return num_stages
    if requested_pp != 1:
        return requested_pp
    return num_stages if visible_gpus >= num_stages and num_stages > 1 else 1


def resolve_drafter(spec: dict[str, Any], target: str, hf_config: Any):
    """``(drafter, head_dir, head config or None)`` after looking for a head; validates the
    head it finds (its ``config.json`` is read here, once)."""
    from vllm_spd import checkpoint

    drafter = spec.get("drafter", "auto")
    num_stages = int(spec.get("num_stages", DEFAULT_NUM_STAGES))
    head = spec.get("model")
    if drafter == "oracle":
        if not spec.get("oracle_tokens"):
            raise ValueError("spd: drafter='oracle' (a benchmark instrument) needs oracle_tokens, "
                             "a recording of the target's greedy outputs")
        cfg = None
        if head is not None:   # the head runs every cycle to price drafting; the oracle proposes
            cfg = checkpoint.read_config(head)
            checkpoint.check_fits_target(cfg, head, hf_config, num_stages, spec.get("stage_layers"), target)
        return "oracle", head, cfg
    if drafter == "ngram":
        if head is not None:
            raise ValueError("spd: drafter='ngram' takes no model; drop 'model' or use drafter='head'")
        return "ngram", None, None
    if head is None:
        head = checkpoint.find_default_head(target, num_stages)
        if head is None:
            searched = checkpoint.default_head_dirs(target, num_stages)
            train = checkpoint.train_command(target, num_stages, spec.get("stage_layers"))
            if drafter in ("head", "hybrid"):
                raise ValueError(f"spd: drafter={drafter!r} but no head given and none found in {searched}; "
                                 f"train one with `{train}` (found there by default), or pass "
                                 "a head directory as speculative_config model")
            logger.warning(
                "spd: no draft head for %s with num_stages=%d (looked in %s); drafting with "
                "prompt-lookup n-grams instead, which is lossless but accepts far fewer drafts. "
                "Train a head with `%s` (written where it is found by default; or pass any head "
                "directory as speculative_config model).", target, num_stages, searched, train)
            return "ngram", None, None
    cfg = checkpoint.read_config(head)
    checkpoint.check_fits_target(cfg, head, hf_config, num_stages, spec.get("stage_layers"), target)
    return ("hybrid" if drafter == "hybrid" else "head"), head, cfg


def default_cycles_per_step(num_stages: int) -> int:
    """``cycles_per_step`` when the config leaves it out (``DEFAULT_CYCLES_PER_STEP``)."""
    return max(DEFAULT_CYCLES_PER_STEP, 2 * num_stages)


def build_spd_config(spec: dict[str, Any], target_model_config: Any, target_parallel_config: Any):
    """Validate an spd dict against the target and build the config object."""
    check_keys(spec)
    if getattr(target_model_config, "logits_processors", None):
        raise ValueError("spd: custom logits processors (--logits-processors) are not applied when SPD "
                         "verifies drafts, so output would not be the target's; remove them or serve "
                         "without speculative decoding")
    hf_config = target_model_config.hf_text_config
    num_layers = check_target(target_model_config.hf_config)
    num_stages = spec.get("num_stages", DEFAULT_NUM_STAGES)
    if not isinstance(num_stages, int) or isinstance(num_stages, bool):
        raise ValueError(f"spd: num_stages must be an integer, got {num_stages!r}")
    if num_stages < 1 or num_stages > num_layers:
        raise ValueError(
            f"spd: num_stages={num_stages} must be between 1 and the target's {num_layers} decoder layers")
    try:
        layout.stage_layer_counts(num_layers, num_stages, spec.get("stage_layers"))
    except ValueError as e:
        raise ValueError(f"spd: {e}") from None
    drafter, head, head_cfg = resolve_drafter(spec, target_model_config.model, hf_config)
    if head_cfg is not None and spec.get("stage_layers") is None:
        spec["stage_layers"] = head_cfg.stage_layers
    k = spec.pop("num_speculative_tokens", None)
    cycles = spec.get("cycles_per_step") or default_cycles_per_step(num_stages)
    if k is not None and k != max(1, cycles - 1):
        raise ValueError(
            f"spd: num_speculative_tokens={k} is derived from cycles_per_step ({cycles} -> {cycles - 1}); "
            "set cycles_per_step instead")
    spec.update(drafter=drafter, model=head)
    try:
        return SPDSpeculativeConfig(**spec, target_model_config=target_model_config,
                                    target_parallel_config=target_parallel_config)
    except ValidationError as e:   # pydantic's dump names the whole config object; say what is wrong
        raise ValueError(plain_validation_error(e)) from None


def plain_validation_error(e: ValidationError) -> str:
    """``spd: <key>=<value>: <problem>; ...`` for pydantic's errors on an spd config."""
    parts = []
    for err in e.errors():
        msg = err.get("msg", "").removeprefix("Value error, ").removeprefix("spd: ")
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}={err.get('input')!r}: {msg}" if loc else msg)
    return "spd: " + "; ".join(parts)


assert "spd" not in get_args(SpeculativeMethod), "vLLM now knows 'spd' itself; revisit the plugin"
