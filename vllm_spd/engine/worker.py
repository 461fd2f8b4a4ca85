"""Worker classes that build SPD's model runner (picked by the plugin's config wrap)."""

from __future__ import annotations

import os

from vllm.v1.worker.gpu_worker import Worker

from vllm_spd.plugin import PP_PARTITION_VAR, pp_partition

from vllm_spd.engine.runner import build_runner_class


class _StageStepMixin:
    """One engine step per call on every rank: with one stage per pipeline rank the SPD
    runner moves stage outputs itself (``vllm_spd.engine.stage_link``), so vLLM's per-step
    pipeline receive/send of intermediate tensors is skipped. Every rank returns the
    same committed tokens; the executor keeps the last rank's."""

    def __init__(self, vllm_config, *args, **kwargs):
        spec = vllm_config.speculative_config
        if vllm_config.parallel_config.pipeline_parallel_size > 1 and spec.stage_layers:
            # vLLM's pipeline split is the stage split. Set in this worker process only
            # (before the model is built); the engine's own environment stays as it was.
            os.environ[PP_PARTITION_VAR] = pp_partition(spec.stage_layers)
        super().__init__(vllm_config, *args, **kwargs)

    def execute_model(self, scheduler_output):
        return self.model_runner.execute_model(scheduler_output, None)


class SPDWorker(_StageStepMixin, Worker):
    """CUDA worker: vLLM's documented override point builds the runner."""

    def _make_model_runner(self):
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        return build_runner_class(GPUModelRunner)(self.vllm_config, self.device)


def _cpu_worker_class():
    from vllm.v1.worker import cpu_worker

    class SPDCPUWorker(_StageStepMixin, cpu_worker.CPUWorker):
        """CPU worker: ``CPUWorker.init_device`` builds ``CPUModelRunner`` by its module
        global name, so that name points at the SPD runner while it runs."""

        def init_device(self):
            original = cpu_worker.CPUModelRunner
            cpu_worker.CPUModelRunner = build_runner_class(original)
            try:
                super().init_device()
            finally:
                cpu_worker.CPUModelRunner = original

    return SPDCPUWorker


def __getattr__(name: str):
    # Importing the CPU worker pulls CPU-only modules; build it only when asked for.
    if name == "SPDCPUWorker":
        cls = _cpu_worker_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
