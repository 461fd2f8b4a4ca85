"""SPD inside vLLM's engine: the worker and scheduler classes the plugin installs, the
runner's engine step (prefill, the host cycle, commits), the device cycle that runs a
step's cycles back to back on the device, the stage slices over vLLM's paged KV cache,
the links between stage ranks, and the CUDA graphs of drafting and verification.
"""
