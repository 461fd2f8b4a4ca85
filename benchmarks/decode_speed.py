"""Decode speed of SPD against plain vLLM on the same GPUs, in one run.

    python benchmarks/decode_speed.py --num-stages 2 --batch 1 4 --out benchmarks/results/decode_speed_n2.json

Systems, each in its own process on the first ``n`` visible GPUs (plain TP=1 on the
first one), all with random weights (``load_format="dummy"``) of the model shape in
``--config`` (default: Qwen3-8B's), bf16, greedy, ``ignore_eos``, the same token-id
prompts (``--input-len``) and output length (``--output-len``):

- plain vLLM: TP=1, TP=n, PP=n (torch.compile + CUDA graphs, vLLM's defaults);
- SPD with n stages on n pipeline ranks:
  (a) ``oracle`` drafter at each ``--alphas`` value: a benchmark instrument that proposes
      the recorded greedy token with probability alpha (recorded by a first SPD run);
      at the first alpha also with greedy verification eager (its CUDA graphs switched
      off in the same engine), to price them;
  (b) the oracle at the last alpha with a random-weight draft module run every cycle
      (unused) to price drafting, and (c) that draft module's own drafts (random
      weights: alpha near 0; shows the cost of drafting when every draft fails).

Method per system and batch size: one warm-up generate of the full length, then
``--runs`` timed generates of ``--output-len`` tokens and ``--runs`` of 1 token; output
tokens/s = batch * output_len / median(full); decode ms/step = (median(full) -
median(1 token)) / (output_len - 1). SPD rows also report the measured per-draft
acceptance, and one extra run with SPD's cycle timer on gives the per-cycle time split
per rank (the timer synchronises the device, so that run is not used for speed).
Peak GPU memory per rank is ``torch.cuda.max_memory_allocated`` of each worker.
``--kernel-breakdown TOKENS`` adds, to plain TP=1 and to one-worker SPD at the first
batch size and alpha, the device time per generated token by kernel category (matrix
products, attention, norms, ...) and the top kernels, from the PyTorch profiler around
one generate (start-up and prefill subtracted with a 1-token generate), to place where
a cycle spends more than a plain decode step.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


# -- functions run inside vLLM's workers through LLM.collective_rpc ------------------------
def _peak_memory(worker):
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def _set_oracle(worker, path, alpha, drafter, price_pdm):
    """Switch a live runner's drafter (the device cycle reads the config at each step),
    keeping its draft module (stream, captured graphs)."""
    from vllm_spd.drafters.drafting import make_drafter
    from vllm_spd.drafters.oracle import OracleDrafter

    r = worker.model_runner
    r.spd_cfg.drafter = drafter
    r.spd_price_pdm = price_pdm
    oracle = OracleDrafter.from_file(path, alpha, r.model_config.get_vocab_size())
    r.spd_drafter = make_drafter(r, r.spd_drafter.module, oracle)


def _arm_profile(worker, after):
    """With ``VLLM_SPD_PROFILE_DIR`` set: profile the ``after``-th decode step from now."""
    p = getattr(worker.model_runner, "spd_profiler", None)
    if p is not None:
        p.arm(after)


def _verify_graphs(worker, on):
    """Switch the controller's verification graphs off (eager verification) or back on;
    returns whether this worker has them."""
    r = worker.model_runner
    if not hasattr(r, "_bench_verify_graphs"):
        r._bench_verify_graphs = r._spd_verify_graphs() if r.spd_is_controller else None
    r.spd_verify_graphs = r._bench_verify_graphs if on else None
    return r._bench_verify_graphs is not None


def _device_cycle(worker, on):
    """Switch the one-worker device cycle off (the host-driven cycle serves every step)
    or back on; returns whether this worker has one."""
    r = worker.model_runner
    if not hasattr(r, "_bench_device"):
        r._bench_device = r._spd_device_cycle()
    r.spd_device = r._bench_device if on else None
    return r._bench_device is not None


def _one_worker_cycle(worker):
    """This worker's device cycle (kept aside by ``_device_cycle`` while switched off), or None."""
    return getattr(worker.model_runner, "_bench_device", None) or worker.model_runner._spd_device_cycle()


def _cycles_per_graph(worker, k):
    """Capture the one-worker device cycle's graphs again with ``k`` cycles each; returns the value taken."""
    d = _one_worker_cycle(worker)
    return d.set_cycles_per_graph(k) if d is not None else None


def _device_timing(worker, on):
    d = _one_worker_cycle(worker)
    return d.set_timing(on) if d is not None else {}


def _kernel_profile(worker, on):
    """Start a CUDA-kernel profile in this worker (``on``), or stop it and return each
    kernel's total device time in us and its launch count."""
    import torch

    if on:
        worker._bench_profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
        worker._bench_profile.__enter__()
        return {}
    prof = worker._bench_profile
    prof.__exit__(None, None, None)
    out = {}
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if us > 0:
            out[e.key] = (float(us), int(e.count))
    return out


#: kernel-name patterns of each category of the kernel breakdown, first match wins
KERNEL_CATEGORIES = (
    ("kv write", ("reshape_and_cache",)),
    ("attention", ("flash", "attn", "prepare_varlen", "paged_attention")),
    ("matmul", ("nvjet", "gemm", "cutlass", "splitk", "xmma", "cublas", "sm90_", "ampere_")),
    ("norm", ("rms_norm", "layernorm", "layer_norm")),
    ("activation", ("act_and_mul", "silu", "gelu")),
    ("rotary", ("rotary",)),
    ("spd kernels", ("_advance_kernel", "_plan_kernel", "_aggregate_kernel", "_draft_head_kernel",
                     "_argmax_blocks_kernel")),
    ("inductor", ("triton_",)),
    ("copy", ("memcpy", "memset")),
)


def kernel_category(name: str) -> str:
    """The breakdown category of a CUDA kernel name (``other`` when nothing matches)."""
    low = name.lower()
    return next((cat for cat, keys in KERNEL_CATEGORIES if any(k in low for k in keys)), "other")


def kernel_breakdown(llm, prompts, tokens: int) -> dict:
    """Device time per generated token by kernel category, and the kernels that take the
    most: profiles a generate of ``tokens + 1`` tokens and one of 1 token, and divides
    the difference by ``batch * tokens`` (so prefill and start-up cancel)."""
    profiles = []
    for n in (tokens + 1, 1):
        llm.collective_rpc(_kernel_profile, args=(True,))
        _timed(llm, prompts, n)
        profiles.append(llm.collective_rpc(_kernel_profile, args=(False,))[0])
    long, short = profiles
    per = len(prompts) * tokens
    kernels = {k: ((us - short.get(k, (0, 0))[0]) / per, (count - short.get(k, (0, 0))[1]) / per)
               for k, (us, count) in long.items()}
    cats: dict[str, float] = {}
    for name, (us, _) in kernels.items():
        cat = kernel_category(name)
        cats[cat] = cats.get(cat, 0.0) + us
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:15]
    return {"tokens": tokens, "us_per_token": {k: round(v, 2) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "total_us_per_token": round(sum(cats.values()), 1),
            "top_kernels": [[name[:120], round(us, 2), round(count, 2)] for name, (us, count) in top]}


def _timer(worker, on):
    t = worker.model_runner.spd_timer
    summary = t.summary()
    t.enabled = on
    t.reset()
    return summary


# -- one system in this process ---------------------------------------------------------
def stage_layers_for(a, cfg: dict) -> list[int] | None:
    """``--stage-layers``: explicit counts, ``even`` (vLLM's split), or ``auto``: balance
    bytes read per cycle, the last stage also reading the LM head and the draft module."""
    if a.stage_layers == "even":
        return None
    L, n = cfg["num_hidden_layers"], a.num_stages
    if a.stage_layers != "auto":
        return [int(x) for x in a.stage_layers.split(",")]
    from vllm_spd.core.layout import balanced_stage_layers

    H, inter, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or H // cfg["num_attention_heads"]
    layer = H * hd * (2 * cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) + 3 * H * inter
    controller = V * H + a.draft_layers * layer + a.draft_vocab * H
    return balanced_stage_layers(L, n, [0.0] * (n - 1) + [controller / layer])


def _prompts(vocab: int, batch: int, input_len: int):
    rng = random.Random(1000 + batch)
    return [[rng.randrange(1000, vocab - 1000) for _ in range(input_len)] for _ in range(batch)]


def _timed(llm, prompts, n):
    from vllm import SamplingParams

    sp = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0, detokenize=False)
    start = time.perf_counter()
    out = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    dt = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == n for o in out)
    return dt, [list(o.outputs[0].token_ids) for o in out]


def _draft_counters(llm):
    c = {m.name: m.value for m in llm.get_metrics() if "spec_decode_num" in m.name and hasattr(m, "value")}
    return c.get("vllm:spec_decode_num_drafts", 0), c.get("vllm:spec_decode_num_accepted_tokens", 0)


def _speed(llm, prompts, a, extra=None):
    _timed(llm, prompts, a.output_len)
    before = _draft_counters(llm)
    full = [_timed(llm, prompts, a.output_len)[0] for _ in range(a.runs)]
    pre = [_timed(llm, prompts, 1)[0] for _ in range(a.runs)]
    after = _draft_counters(llm)
    b = len(prompts)
    tf, tp = statistics.median(full), statistics.median(pre)
    row = dict(batch=b, out_tok_s=round(b * a.output_len / tf, 1),
               ms_per_token=round(1000 * tf / a.output_len, 3),
               decode_ms_per_step=round(1000 * (tf - tp) / (a.output_len - 1), 3),
               t_full_s=[round(x, 4) for x in full], t_prefill1_s=[round(x, 4) for x in pre])
    drafts = after[0] - before[0]
    if drafts:
        row["measured_alpha"] = round((after[1] - before[1]) / drafts, 4)
    row.update(extra or {})
    return row


def run_system(a) -> list[dict]:
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"   # collective_rpc with functions
    # Workers start clean (spawn), whatever this process touched before the engine.
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
    from vllm import LLM

    n = a.num_stages
    mdir = tempfile.mkdtemp(prefix="spd_dummy_")
    shutil.copy(a.config, os.path.join(mdir, "config.json"))
    with open(a.config) as f:
        cfg = json.load(f)
    vocab = cfg["vocab_size"]
    kw = dict(model=mdir, load_format="dummy", skip_tokenizer_init=True, dtype=a.dtype,
              max_model_len=a.max_model_len, gpu_memory_utilization=a.gpu_mem, enable_prefix_caching=False,
              seed=0, disable_log_stats=False)
    system = a.system
    if system == "tp1":
        pass
    elif system == "tpn":
        kw.update(tensor_parallel_size=n, distributed_executor_backend="mp")
    elif system == "ppn":
        kw.update(pipeline_parallel_size=n, distributed_executor_backend="mp")
    elif system == "spd1":
        rec = os.path.join(mdir, "oracle.json")
        json.dump({}, open(rec, "w"))
        head = _random_head(a, mdir, None) if a.one_gpu_pdm_alphas else None
        kw.update(enforce_eager=a.spd_eager, speculative_config={
            "method": "spd", "num_stages": n, "stage_placement": "single_worker", "drafter": "oracle",
            "oracle_tokens": rec, "oracle_alpha": 0.0, "cycles_per_step": a.cycles_per_step or None, "verdict_lag": 0,
            **({"model": head} if head else {})})
    elif system == "spd":
        head = _random_head(a, mdir, stage_layers_for(a, cfg))
        rec = os.path.join(mdir, "oracle.json")
        json.dump({}, open(rec, "w"))
        kw.update(enforce_eager=a.spd_eager, speculative_config={
            "method": "spd", "num_stages": n, "stage_placement": "pipeline", "drafter": "oracle",
            "oracle_tokens": rec, "oracle_alpha": 0.0, "model": head, "cycles_per_step": a.cycles_per_step,
            **({} if a.verdict_lag is None else {"verdict_lag": a.verdict_lag})})
    t0 = time.perf_counter()
    llm = LLM(**kw)
    start_s = round(time.perf_counter() - t0, 1)
    rows = Rows()
    base = dict(system=system, num_gpus=1 if system in ("tp1", "spd1") else n, engine_start_s=start_s)
    if system == "spd1":
        base["num_stages"] = n
        base["cycles_per_step"] = llm.llm_engine.vllm_config.speculative_config.cycles_per_step
        return _one_worker_rows(llm, a, vocab, rec, base)
    if system == "spd":
        base["stage_layers"] = llm.llm_engine.vllm_config.speculative_config.stage_layers
        base["verdict_lag"] = llm.llm_engine.vllm_config.speculative_config.verdict_lag
    for b in a.batch:
        prompts = _prompts(vocab, b, a.input_len)
        if system != "spd":
            rows.append(_speed(llm, prompts, a, base))
            if a.kernel_breakdown and system == "tp1" and b == a.batch[0]:
                rows[-1]["kernels"] = kernel_breakdown(llm, prompts, a.kernel_breakdown)
            continue
        from vllm_spd.drafters.oracle import save_recording

        # Record the greedy continuation through SPD itself (every draft wrong: exact output).
        llm.collective_rpc(_set_oracle, args=(rec, 0.0, "oracle", False))
        _, outs = _timed(llm, prompts, a.output_len)
        save_recording(rec, prompts, outs)
        for alpha in a.alphas:
            llm.collective_rpc(_set_oracle, args=(rec, alpha, "oracle", False))
            if alpha == a.alphas[0] and b == a.batch[0]:
                llm.collective_rpc(_arm_profile, args=(4,))   # a steady-state step of its warm-up
            rows.append(_speed(llm, prompts, a, {**base, "drafter": "oracle", "alpha": alpha}))
            if alpha == a.alphas[0]:
                llm.collective_rpc(_timer, args=(True,))
                _timed(llm, prompts, a.output_len)
                rows[-1]["cycle_split"] = llm.collective_rpc(_timer, args=(False,))
                if base["verdict_lag"] == 0:   # the device cycle: each rank's host and device time per cycle
                    llm.collective_rpc(_device_timing, args=(True,))
                    _timed(llm, prompts, a.output_len)
                    rows[-1]["device_cycle_timing_per_rank"] = llm.collective_rpc(_device_timing, args=(False,))
                if any(llm.collective_rpc(_verify_graphs, args=(False,))):
                    # the same row with greedy verification eager: what its graphs save
                    rows.append(_speed(llm, prompts, a, {**base, "drafter": "oracle", "alpha": alpha,
                                                         "verify": "eager"}))
                    llm.collective_rpc(_verify_graphs, args=(True,))
        alpha = a.alphas[-1]
        llm.collective_rpc(_set_oracle, args=(rec, alpha, "oracle", True))
        rows.append(_speed(llm, prompts, a, {**base, "drafter": "oracle+pdm_priced", "alpha": alpha}))
        llm.collective_rpc(_timer, args=(True,))
        _timed(llm, prompts, a.output_len)
        rows[-1]["cycle_split"] = llm.collective_rpc(_timer, args=(False,))
        if b in a.random_pdm_batch:
            llm.collective_rpc(_set_oracle, args=(rec, 0.0, "head", True))
            rows.append(_speed(llm, prompts, a, {**base, "drafter": "random_pdm"}))
    peak = llm.collective_rpc(_peak_memory)
    for r in rows:
        r["peak_mem_gib_per_rank"] = [round(x / 2**30, 2) for x in peak]
    return rows


def _random_head(a, mdir: str, split) -> str:
    """A random head for the model in ``mdir``, written by a child process: building its
    layers here could initialise CUDA in this process before vLLM starts its workers."""
    head = os.path.join(mdir, "head")
    subprocess.run([sys.executable, "-m", "vllm_spd.head", "init", "--target", mdir, "--num-stages",
                    str(a.num_stages), "--out", head, "--draft-layers", str(a.draft_layers),
                    "--draft-vocab-size", str(a.draft_vocab),
                    *(["--stage-layers", ",".join(map(str, split))] if split else [])],
                   check=True, stdout=subprocess.DEVNULL)
    return head


class Rows(list):
    """A system's rows, each also printed as it is measured, so that a system cut off by
    --system-timeout still reports the rows it finished."""

    def append(self, row: dict) -> None:
        super().append(row)
        print("ROW " + json.dumps(row), flush=True)


def _one_worker_rows(llm, a, vocab, rec, base) -> list[dict]:
    """All n stages in one worker on one GPU, per alpha: the device cycle (with its host
    and device time per cycle) once per ``--one-gpu-cycles-per-graph`` value, at
    ``--one-gpu-pdm-alphas`` also with a random draft module run every cycle (unused, to
    price it; at the last of those values), and at ``--one-gpu-host-alphas`` the
    host-driven cycle in the same engine, for comparison."""
    from vllm_spd.drafters.oracle import save_recording

    rows = Rows()
    for b in a.batch:
        prompts = _prompts(vocab, b, a.input_len)
        llm.collective_rpc(_set_oracle, args=(rec, 0.0, "oracle", False))
        _, outs = _timed(llm, prompts, a.output_len)     # the greedy continuation (all drafts wrong)
        save_recording(rec, prompts, outs)
        for alpha in a.alphas:
            ks = a.one_gpu_cycles_per_graph
            kinds = [("device", False, k) for k in ks] + [("device", True, ks[-1])] * (alpha in a.one_gpu_pdm_alphas) \
                + [("host", False, None)] * (alpha in a.one_gpu_host_alphas)
            for cycle, pdm, k in kinds:
                llm.collective_rpc(_set_oracle, args=(rec, alpha, "oracle", pdm))
                llm.collective_rpc(_device_cycle, args=(cycle == "device",))
                extra = {}
                if k is not None:
                    extra["cycles_per_graph"] = llm.collective_rpc(_cycles_per_graph, args=(k,))[0]
                first = (b, alpha, cycle, pdm, k) == (a.batch[0], a.alphas[0], "device", False, ks[0])
                if first:
                    llm.collective_rpc(_arm_profile, args=(4,))   # a steady-state step of its warm-up
                row = _speed(llm, prompts, a, {**base, "drafter": "oracle+pdm_priced" if pdm else "oracle",
                                               "alpha": alpha, "cycle": cycle, **extra})
                if a.kernel_breakdown and first:
                    row["kernels"] = kernel_breakdown(llm, prompts, a.kernel_breakdown)
                if cycle == "device":
                    llm.collective_rpc(_device_timing, args=(True,))
                    _timed(llm, prompts, a.output_len)
                    row["device_cycle_timing"] = llm.collective_rpc(_device_timing, args=(False,))[0]
                    _, check = _timed(llm, prompts, a.output_len)
                    row["output_matches_plain"] = check == outs
                rows.append(row)
            llm.collective_rpc(_device_cycle, args=(True,))
    peak = llm.collective_rpc(_peak_memory)
    for r in rows:
        r["peak_mem_gib_per_rank"] = [round(x / 2**30, 2) for x in peak]
    return rows


# -- driver -------------------------------------------------------------------------------
def _gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except Exception:
        return "unknown"


def _label(r) -> str:
    n = r["num_gpus"]
    if r["system"] == "tp1":
        return "plain TP=1"
    if r["system"] in ("tpn", "ppn"):
        return f"plain {'TP' if r['system'] == 'tpn' else 'PP'}={n}"
    d = r["drafter"]
    if r["system"] == "spd1":
        pdm = " + PDM run" if r["drafter"] == "oracle+pdm_priced" else ""
        timing = r.get("device_cycle_timing") or {}
        eager = " (eager stages)" if "stage_compile" in timing and timing["stage_compile"] is None else ""
        k = r.get("cycles_per_graph") or 1
        per = f", {k} cycles/graph" if k > 1 else ""
        return f"SPD n={r['num_stages']} 1 GPU {r['cycle']} cycle alpha={r['alpha']}{pdm}{eager}{per}"
    spd = f"SPD n={n}" + (f" lag {r['verdict_lag']}" if "verdict_lag" in r else "")
    if d == "oracle":
        return f"{spd} oracle alpha={r['alpha']}" + (", eager verify" if r.get("verify") == "eager" else "")
    if d == "oracle+pdm_priced":
        return f"{spd} oracle alpha={r['alpha']} + PDM run"
    return f"{spd} random PDM drafts"


def print_table(rows: list[dict]) -> None:
    ref = {r["batch"]: r["out_tok_s"] for r in rows if r["system"] == "tp1"}
    print(f"{'system':36s} {'batch':>5s} {'tok/s':>8s} {'ms/tok':>8s} {'vs TP1':>7s} {'alpha':>6s}  peak GiB/rank")
    for r in rows:
        vs = r["out_tok_s"] / ref[r["batch"]] if r["batch"] in ref else float("nan")
        alpha = r.get("measured_alpha")
        print(f"{_label(r):36s} {r['batch']:5d} {r['out_tok_s']:8.1f} {r['ms_per_token']:8.2f} {vs:7.2f} "
              f"{'' if alpha is None else f'{alpha:.2f}':>6s}  {r.get('peak_mem_gib_per_rank', '')}")
        k = r.get("kernels")
        if k:
            print(f"{'':8s}kernels {k['total_us_per_token']} us/token: "
                  + ", ".join(f"{c} {us}" for c, us in k["us_per_token"].items()))
        t = r.get("device_cycle_timing")
        if t:
            print(f"{'':8s}host {t['host_us_per_cycle']} us/cycle, device {t['device_ms_per_cycle']} ms/cycle, "
                  f"idle {t['idle_us_between_cycles']} us between cycles, {t.get('idle_us_between_steps')} us "
                  f"between steps; output = plain: {r['output_matches_plain']}")
            for kind in ("full", "resident"):
                phases = t.get(f"step_load_phases_{kind}_us")
                if phases:
                    count = t["resident_steps"] if kind == "resident" else t["steps"] - t["resident_steps"]
                    print(f"{'':8s}step load, {kind} ({count} steps): {t[f'step_load_{kind}_us']} us: "
                          + ", ".join(f"{k} {v}" for k, v in phases.items()))
        for rank, t in enumerate(r.get("device_cycle_timing_per_rank") or []):
            if t:
                print(f"{'':8s}rank {rank}: device cycle, host {t['host_us_per_cycle']} us/cycle, device "
                      f"{t['device_ms_per_cycle']} ms/cycle (its hop included), {t['cycles']} cycles")
        for rank, split in enumerate(r.get("cycle_split") or []):
            parts = " ".join(f"{k}={v:.3f}" for k, v in split["ms_per_cycle"].items())
            print(f"{'':8s}rank {rank}: {split['total_ms_per_cycle']:.3f} ms/cycle ({parts})")


def _settings(a) -> dict:
    gpus = 1 if set(getattr(a, "systems", ())) <= {"tp1", "spd1"} else a.num_stages
    return dict(hardware=f"{gpus}x {_gpu_name()}", config=os.path.basename(a.config),
                num_stages=a.num_stages, input_len=a.input_len, output_len=a.output_len, runs=a.runs,
                dtype=a.dtype)


def _earlier_rows(a) -> list[dict]:
    """Rows already in ``--out`` from a run of the same settings (for ``--append``)."""
    if not a.out or not os.path.exists(a.out):
        return []
    with open(a.out) as f:
        earlier = json.load(f)
    mine = _settings(a)
    differ = {k: (earlier.get(k), v) for k, v in mine.items() if earlier.get(k) != v}
    if differ:
        raise SystemExit(f"--append: {a.out} holds a run with other settings {differ}")
    return earlier["rows"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(HERE, "configs", "qwen3_8b.json"))
    ap.add_argument("--num-stages", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.6])
    ap.add_argument("--systems", nargs="+", default=["tp1", "tpn", "ppn", "spd"],
                    choices=["tp1", "tpn", "ppn", "spd", "spd1"],
                    help="spd1: all stages in one worker on one GPU (the device cycle, and the host cycle "
                         "for comparison)")
    ap.add_argument("--one-gpu-stages", type=int, nargs="*", default=None,
                    help="spd1: the num_stages values to run in one worker (default: --num-stages)")
    ap.add_argument("--one-gpu-host-alphas", type=float, nargs="*", default=[1.0],
                    help="spd1: alphas at which the host-driven cycle is measured too")
    ap.add_argument("--one-gpu-pdm-alphas", type=float, nargs="*", default=[0.8],
                    help="spd1: alphas at which a random draft module also runs every cycle (unused)")
    ap.add_argument("--one-gpu-stage-compile", nargs="*", default=[""], metavar="BACKEND",
                    help="spd1: one engine per value, with VLLM_SPD_STAGE_COMPILE set to it (e.g. 'inductor 0': "
                         "the stage slices compiled, then eager); default: the engine's own choice")
    ap.add_argument("--one-gpu-cycles-per-graph", type=int, nargs="+", default=[1], metavar="K",
                    help="spd1: device-cycle rows with K cycles captured per CUDA graph, one row per value "
                         "(the same engine, its graphs captured again)")
    ap.add_argument("--cycles-per-step", type=int, default=64, help="SPD's cycles_per_step (0: its default)")
    ap.add_argument("--draft-layers", type=int, default=1)
    ap.add_argument("--draft-vocab", type=int, default=32768)
    ap.add_argument("--stage-layers", default="auto",
                    help="SPD layer split: 'auto' (balance the last stage's LM head and draft module), "
                         "'even' (vLLM's split) or counts like 20,16")
    ap.add_argument("--random-pdm-batch", type=int, nargs="*", default=[1],
                    help="batch sizes that also get the row with the random draft module's own drafts")
    ap.add_argument("--spd-eager", action=argparse.BooleanOptionalAction, default=False,
                    help="SPD engine with enforce_eager (stage forwards without torch.compile / CUDA graphs)")
    ap.add_argument("--verdict-lag", type=int, default=None, choices=[0, 1],
                    help="SPD's verdict_lag (default: the engine's, 1 across ranks): 1 broadcasts each "
                         "cycle's drafts before the controller's stage, without waiting for verification")
    ap.add_argument("--kernel-breakdown", type=int, default=0, metavar="TOKENS",
                    help="tp1 and spd1 at the first batch and alpha: profile the CUDA kernels of a generate "
                         "of TOKENS tokens and report device time per token by kernel category (0: off)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--gpu-mem", type=float, default=0.85)
    ap.add_argument("--system-timeout", type=int, default=1800, help="seconds per system before giving up")
    ap.add_argument("--out", default=None)
    ap.add_argument("--append", action="store_true",
                    help="add this run's rows to --out when it holds a run of the same settings (hardware, "
                         "config, stages, lengths, runs, dtype), e.g. the other systems of one session "
                         "split over several calls; without it --out is overwritten")
    ap.add_argument("--system", default=None, help=argparse.SUPPRESS)   # internal: run one system
    a = ap.parse_args(argv)
    if a.system:
        print("ROWS " + json.dumps(run_system(a)), flush=True)
        return
    rows = _earlier_rows(a) if a.append else []
    runs = [(system, []) for system in a.systems if system != "spd1"]
    if "spd1" in a.systems:
        runs += [("spd1", ["--num-stages", str(n)], compile_as) for n in (a.one_gpu_stages or [a.num_stages])
                 for compile_as in (a.one_gpu_stage_compile or [""])]
    for system, extra, *compile_as in runs:
        env = dict(os.environ)
        if compile_as and compile_as[0]:
            env["VLLM_SPD_STAGE_COMPILE"] = compile_as[0]
        if system in ("tp1", "spd1"):
            visible = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
            env["CUDA_VISIBLE_DEVICES"] = visible
        cmd = [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]),
               *extra, "--system", system]
        # Own process group, so a timed-out system takes its engine and workers with it.
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=a.system_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            sys.stderr.write(stdout[-3000:] + stderr[-12000:])
            done = [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("ROW ")]
            rows += [dict(r, cut_off=True) for r in done]
            print(f"[{system}] timed out after {a.system_timeout} s ({len(done)} rows finished)", flush=True)
            _write(a, rows)
            continue
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)   # leftovers of a finished system
            except ProcessLookupError:
                pass
        found = [line for line in stdout.splitlines() if line.startswith("ROWS ")]
        if proc.returncode or not found:
            sys.stderr.write(stdout[-3000:] + stderr[-12000:])
            print(f"[{system}] failed (exit {proc.returncode})", flush=True)
            continue
        rows += json.loads(found[-1][5:])
        print(f"[{system}] done", flush=True)
        _write(a, rows)
    print_table(rows)


def _write(a, rows: list[dict]) -> None:
    """Write --out after every system, so a cut-off run keeps what it measured."""
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(dict(_settings(a), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
