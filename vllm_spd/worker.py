"""Worker classes that build SPD's model runner (picked by the plugin's config wrap)."""

from __future__ import annotations

from vllm.v1.worker.gpu_worker import Worker

from vllm_spd.runner import build_runner_class


class SPDWorker(Worker):
    """CUDA worker: vLLM's documented override point builds the runner."""

    def _make_model_runner(self):
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        return build_runner_class(GPUModelRunner)(self.vllm_config, self.device)


def _cpu_worker_class():
    from vllm.v1.worker import cpu_worker

    class SPDCPUWorker(cpu_worker.CPUWorker):
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
