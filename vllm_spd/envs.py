"""Every environment variable vllm_spd reads, in one place."""

import os

#: Skip the exact-vLLM-version check in ``register()`` (at your own risk).
SKIP_VERSION_CHECK_VAR = "VLLM_SPD_SKIP_VERSION_CHECK"
#: Seconds a stage rank waits for a peer (stage rows, anchors, control) before failing.
STAGE_TIMEOUT_VAR = "VLLM_SPD_STAGE_TIMEOUT_S"
#: Where offline-built models and default heads are cached.
CACHE_DIR_VAR = "VLLM_SPD_CACHE"
#: "0" keeps stage forwards off vLLM's full decode CUDA graphs (piecewise graphs only).
FULL_GRAPHS_VAR = "VLLM_SPD_FULL_GRAPHS"
#: "0" runs the draft module eagerly instead of replaying its CUDA graphs.
DRAFT_GRAPHS_VAR = "VLLM_SPD_DRAFT_GRAPHS"
#: "0" verifies eagerly instead of replaying verification CUDA graphs (greedy batches).
VERIFY_GRAPHS_VAR = "VLLM_SPD_VERIFY_GRAPHS"
#: "0" keeps every decode step on the host-driven cycle (no device-resident cycle).
DEVICE_CYCLE_VAR = "VLLM_SPD_DEVICE_CYCLE"
#: "0" runs the device cycle eagerly on pipeline ranks instead of replaying each rank's
#: CUDA graphs around the hop between ranks.
RANK_GRAPHS_VAR = "VLLM_SPD_RANK_GRAPHS"
#: torch.compile backend of the device cycle's stage slices (``stage_compile.py``): unset,
#: "inductor" where the cycle's CUDA graphs are captured and none elsewhere; "0" runs them
#: eagerly; a backend named here is used on CPU too.
STAGE_COMPILE_VAR = "VLLM_SPD_STAGE_COMPILE"
#: Cycles one CUDA graph of the device cycle holds back to back (default 1): a step runs
#: its cycles as whole launches of that many, then one at a time for the rest.
CYCLES_PER_GRAPH_VAR = "VLLM_SPD_CYCLES_PER_GRAPH"
#: Folder for a PyTorch profile of one decode step per rank (see step_profiler.py).
PROFILE_DIR_VAR = "VLLM_SPD_PROFILE_DIR"
#: Which decode step (1-based) that profile covers.
PROFILE_STEP_VAR = "VLLM_SPD_PROFILE_STEP"


def skip_version_check() -> bool:
    return os.environ.get(SKIP_VERSION_CHECK_VAR, "0").lower() in ("1", "true", "yes")


def cache_dir() -> str:
    return os.environ.get(CACHE_DIR_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "vllm_spd")


def stage_timeout_s() -> float:
    return float(os.environ.get(STAGE_TIMEOUT_VAR) or 600)


def profile_dir() -> str | None:
    return os.environ.get(PROFILE_DIR_VAR) or None


def profile_step() -> int:
    return int(os.environ.get(PROFILE_STEP_VAR) or 10)


def _on(var: str) -> bool:
    return os.environ.get(var, "1").lower() not in ("0", "false", "no")


def full_graphs() -> bool:
    return _on(FULL_GRAPHS_VAR)


def draft_graphs() -> bool:
    return _on(DRAFT_GRAPHS_VAR)


def verify_graphs() -> bool:
    return _on(VERIFY_GRAPHS_VAR)


def device_cycle() -> bool:
    return _on(DEVICE_CYCLE_VAR)


def rank_graphs() -> bool:
    return _on(RANK_GRAPHS_VAR)


def stage_compile(default: str | None) -> str | None:
    """The stage slices' torch.compile backend, ``default`` when unset, None when off."""
    value = os.environ.get(STAGE_COMPILE_VAR, "").strip()
    if not value:
        return default
    return None if value.lower() in ("0", "false", "no", "off") else value


def cycles_per_graph() -> int:
    value = os.environ.get(CYCLES_PER_GRAPH_VAR, "").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"spd: {CYCLES_PER_GRAPH_VAR}={value!r} must be a whole number of cycles, 1 or more")
    return int(value)
