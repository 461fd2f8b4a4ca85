"""Time the PDM kernels against the unfused torch path and the memory-bandwidth floor.

    python benchmarks/kernels.py --out kernels.json            # CUDA GPU, Qwen3-8B shapes, bf16
    python benchmarks/kernels.py --dry-run --out smoke.json    # any machine, tiny shapes, no timings

Shapes (Qwen3-8B, anchors [0,9,18,27,35]): H=4096, m=5 aggregation types, draft vocab
K=32000.  "batch" is the number of requests; in steady state each contributes one row of
every type to the aggregation (rows = 5 x batch) and one row to the head (rows = batch).

Per op: the fused Triton path, the unfused torch path (what plain torch would do without
host syncs: per-type gather + concat + cuBLAS linear; RMSNorm + full logits + argmax), and
the floor = bytes that must move / device-to-device copy bandwidth measured in the same
run (copy counts read + write).  Times are medians (triton.testing.do_bench, L2 flushed
between calls; --cuda-graph times graph replays, i.e. without launch overhead).
Without CUDA, --dry-run runs every path once through Triton's interpreter and checks
that fused and unfused agree; it claims no timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

FULL = dict(hidden=4096, anchors=[0, 9, 18, 27, 35], vocab=32000, dtype="bfloat16")
DRY = dict(hidden=96, anchors=[0, 2, 4], vocab=700, dtype="float32")


def build(shape, batch, device, seed=0):
    """Random weights and inputs for one batch size."""
    from vllm_spd.kernels import pack_aggregation_weights

    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = getattr(torch, shape["dtype"])
    h, m, k = shape["hidden"], len(shape["anchors"]), shape["vocab"]

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=gen, device=device) * scale).to(dtype)

    packed = pack_aggregation_weights([randn(h, (a + 1) * h, scale=((a + 1) * h) ** -0.5) for a in range(m)])
    types = torch.arange(m, device=device).repeat(batch)  # one row of each type per request
    return dict(
        packed=packed, types=types, anchors=randn(m, types.numel(), h),
        rows_of_type=[torch.nonzero(types == a).flatten() for a in range(m)],  # host-known in a runner
        hidden=randn(batch, h), norm_w=1 + randn(h, scale=0.1), lm_head=randn(k, h, scale=h ** -0.5),
        ids=torch.randperm(151936, device=device)[:k].sort().values, eps=1e-6,
    )


def unfused_aggregation(c):
    out = c["anchors"].new_empty(c["types"].numel(), c["packed"].hidden_size)
    for a, rows in enumerate(c["rows_of_type"]):
        x = c["anchors"][: a + 1, rows].transpose(0, 1).reshape(rows.numel(), -1)  # the concat copy
        out[rows] = torch.nn.functional.linear(x, c["packed"].type_weight(a))
    return out


def unfused_head(c):
    x = c["hidden"].float()
    y = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c["eps"])).to(c["hidden"].dtype) * c["norm_w"]
    return c["ids"][torch.nn.functional.linear(y, c["lm_head"]).argmax(-1)]


def fused_paths(c):
    from vllm_spd.kernels.aggregation_triton import aggregate_anchors_triton
    from vllm_spd.kernels.draft_head_triton import draft_greedy_triton, draft_logits_triton

    head_args = (c["hidden"], c["norm_w"], c["eps"], c["lm_head"])
    return dict(
        aggregation=lambda: aggregate_anchors_triton(c["anchors"], c["types"], c["packed"]),
        head_greedy=lambda: draft_greedy_triton(*head_args, c["ids"]),
        head_logits=lambda: draft_logits_triton(*head_args),
    )


def bytes_moved(c):
    """Bytes each op must move at least: weights of the types used, inputs, outputs."""
    el = c["anchors"].element_size()
    h, rows = c["packed"].hidden_size, c["types"].numel()
    types = c["types"].tolist()
    agg = (sum((a + 1) * h * h for a in set(types)) + sum((a + 1) * h for a in types) + rows * h) * el
    k, batch = c["lm_head"].shape[0], c["hidden"].shape[0]
    head = (k * h + batch * h + h) * el + k * 8  # + the id table
    return dict(aggregation=agg, head_greedy=head + batch * 8, head_logits=head + batch * k * 4)


def check(c, fused):
    """Fused and unfused must agree (argmax: same id, or a near-tie)."""
    agg, ref = fused["aggregation"]().float(), unfused_aggregation(c).float()
    scale = ref.abs().max().item()
    assert (agg - ref).abs().max().item() <= 3e-2 * max(scale, 1.0), "aggregation mismatch"
    got, ref_ids = fused["head_greedy"](), unfused_head(c)
    logits = fused["head_logits"]()
    for r in torch.nonzero(got != ref_ids).flatten().tolist():
        k = torch.searchsorted(c["ids"], got[r]).item()
        top = logits[r].max().item()
        assert logits[r, k].item() >= top - 3e-2 * max(abs(top), 1.0), "head argmax mismatch"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, run once, no timings")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replays")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        parser.error("timings need a CUDA GPU; use --dry-run for a CPU smoke test")
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported
    import triton
    import triton.testing

    device = "cuda" if cuda else "cpu"
    shape = DRY if args.dry_run else FULL

    def median_ms(fn):
        if args.cuda_graph:
            return triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median")
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    copy_gbps = None
    if not args.dry_run:
        src = torch.empty(1 << 29, dtype=torch.uint8, device=device)  # 512 MiB
        dst = torch.empty_like(src)
        copy_ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
        copy_gbps = 2 * src.numel() / (copy_ms * 1e-3) / 1e9
        del src, dst

    results = []
    for batch in args.batch:
        c = build(shape, batch, device)
        fused = fused_paths(c)
        check(c, fused)
        unfused = dict(aggregation=lambda: unfused_aggregation(c), head_greedy=lambda: unfused_head(c),
                       head_logits=None)
        for op, nbytes in bytes_moved(c).items():
            row = dict(op=op, batch=batch, rows=c["types"].numel() if op == "aggregation" else batch,
                       bytes=nbytes, fused_us=None, torch_us=None, floor_us=None)
            if not args.dry_run:
                row["fused_us"] = median_ms(fused[op]) * 1e3
                row["torch_us"] = median_ms(unfused[op]) * 1e3 if unfused[op] else None
                row["floor_us"] = nbytes / (copy_gbps * 1e9) * 1e6
            results.append(row)
        del c, fused

    fmt = lambda v: f"{'n/a':>9}" if v is None else f"{v:9.1f}"  # noqa: E731
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu (interpreter)'}; "
          f"shape: {shape}; copy bandwidth: {fmt(copy_gbps)} GB/s"
          + ("; DRY RUN: no timings" if args.dry_run else ""))
    print(f"{'op':<12} {'batch':>5} {'rows':>5} {'MB':>8} {'fused us':>9} {'torch us':>9} "
          f"{'floor us':>9} {'floor/fused':>11}")
    for r in results:
        frac = r["floor_us"] / r["fused_us"] if r["fused_us"] else None
        print(f"{r['op']:<12} {r['batch']:>5} {r['rows']:>5} {r['bytes'] / 1e6:>8.1f} {fmt(r['fused_us'])} "
              f"{fmt(r['torch_us'])} {fmt(r['floor_us'])} {'n/a' if frac is None else f'{frac:.2f}':>11}")
    if args.out:
        meta = dict(device=torch.cuda.get_device_name() if cuda else "cpu", dry_run=args.dry_run,
                    cuda_graph=args.cuda_graph, torch=torch.__version__, triton=triton.__version__,
                    shape=shape, copy_bandwidth_gbps=copy_gbps)
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
