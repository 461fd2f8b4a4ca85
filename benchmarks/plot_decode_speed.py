#!/usr/bin/env python3
"""Plot decode tok/s against the measured acceptance alpha, per system, from
`decode_speed.py` results: one panel per (hardware, num_stages), and one per hardware for
all stages on one GPU; SPD's oracle rows as lines, plain vLLM (TP=1, TP=n, PP=n) as
horizontal lines.

    python benchmarks/plot_decode_speed.py                  # the results the README cites
    python benchmarks/plot_decode_speed.py A.json B.json:"earlier code" --batch 4 --out plot.png

A file may carry a label after `.json:`; it names that file's SPD lines. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_INPUTS = [
    f"{HERE}/results/decode_speed_n2_h200_lag1.json",
    f"{HERE}/results/decode_speed_n2_h200_early.json:controller broadcasts before its stage (earlier code)",
    f"{HERE}/results/decode_speed_n4_h200.json",
    f"{HERE}/results/decode_speed_1gpu_h100_resident.json",
]
BASELINES = {"tp1": ("plain vLLM TP=1", ":"), "tpn": ("plain vLLM TP={n}", "--"), "ppn": ("plain vLLM PP={n}", "-.")}


def load(specs: list[str], batch: int):
    """{(hardware, n): {"spd": {label: [(alpha, tok/s)]}, "base": {system: tok/s}}} from the
    oracle rows and the plain systems at ``batch``."""
    panels: dict = defaultdict(lambda: {"spd": defaultdict(list), "base": {}})
    for spec in specs:
        path, sep, label = spec.partition(".json:")
        data = json.loads(Path(path + ".json" if sep else path).read_text())
        one_gpu = any(row["system"] == "spd1" for row in data["rows"])
        key = (data["hardware"], 1 if one_gpu else int(data["num_stages"]))
        for row in data["rows"]:
            if row["batch"] != batch:
                continue
            if row["system"] in BASELINES:
                panels[key]["base"].setdefault(row["system"], row["out_tok_s"])
            elif (row["system"] == "spd1" and row.get("drafter") == "oracle" and row.get("cycle") == "device"
                  and (row.get("cycles_per_graph") or 1) == 1):
                name = f"SPD n={row['num_stages']}, all stages on one GPU (device cycle)"
                if label:
                    name += f", {label}"
                panels[key]["spd"][name].append((row["measured_alpha"], row["out_tok_s"]))
            elif row["system"] == "spd" and row.get("drafter") == "oracle":
                name = f"SPD n={key[1]}, verdict_lag {row.get('verdict_lag')}"
                if label:
                    name += f", {label}"
                panels[key]["spd"][name].append((row["measured_alpha"], row["out_tok_s"]))
    return dict(panels)


def plot(panels: dict, batch: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(panels, key=lambda k: k[1])
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        hardware, n = key
        for name, points in sorted(panels[key]["spd"].items()):
            points.sort()
            ax.plot([a for a, _ in points], [t for _, t in points], "o-", label=name)
        for system, tok_s in sorted(panels[key]["base"].items()):
            label, line = BASELINES[system]
            ax.axhline(tok_s, linestyle=line, color="dimgray", linewidth=1.2,
                       label=f"{label.format(n=n)}: {tok_s:.0f}")
        ax.set_title(f"{hardware}, {'one GPU' if n == 1 else f'n={n}'}, batch {batch}")
        ax.set_xlabel("measured alpha (oracle drafts)")
        ax.set_ylabel("decode tok/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Qwen3-8B shape, bf16, 128-token prompt, 512 new tokens, vLLM 0.32.0", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", default=DEFAULT_INPUTS, help="decode_speed.py JSON files, FILE.json[:LABEL]")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "plots" / "decode_speed.png")
    args = p.parse_args(argv)
    plot(load(args.inputs, args.batch), args.batch, args.out)


if __name__ == "__main__":
    main()
