"""The draft-head checkpoint: an HF-style directory the plugin loads directly.

Layout of a head directory::

    config.json          {"architectures": ["SPDDraftHead"], "model_type": "spd_head",
                          "spd": {...HeadConfig fields...}}
    model.safetensors    aggr_projs.{a}.weight      [H, (a+1)*H]  one projection per type
                         layers.{j}.<HF decoder-layer names>       the draft tower
                         lm_head.weight             [K, H]        draft-vocabulary head
                         draft_token_ids            [K] int64     sorted full-vocab ids

The tower layers use the target family's own decoder layer (Qwen3 or Llama) with HF
parameter names, so a head trained with transformers loads into vLLM's layer classes.

Weight formats (``spd.weight_format``): ``"float"`` stores every tensor as saved (float32,
bfloat16 or float16). ``"int8-rowwise"`` stores each 2-D weight ``W [rows, cols]`` as
``name`` (int8, ``round(W / scale[:, None])``) plus ``name + ".scale"`` (float32
``[rows]``, ``scale = max|row| / 127``, 1 for a zero row): a quarter of float32, half of
bf16, each weight within ``scale / 2``. Norm weights and ``draft_token_ids`` stay as they
are. :func:`load_tensors` dequantizes to float32, so nothing past it knows the format.
``python -m vllm_spd.head pack --int8 IN OUT`` packs a head.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from vllm_spd import envs

#: Format versions read here: 1 holds float weights only; 2 adds ``weight_format``. A float
#: head is still written as version 1, so an older vllm_spd reads it, and an int8 one as
#: version 2, which an older vllm_spd refuses by its version instead of misreading it.
FORMAT_VERSION = 2
WEIGHT_FORMATS = {"float": 1, "int8-rowwise": 2}   # weight format -> format version written
SCALE_SUFFIX = ".scale"
HEAD_ARCHITECTURE = "SPDDraftHead"
WEIGHTS_FILE = "model.safetensors"


class HeadError(ValueError):
    """A head directory is missing, unreadable or does not fit the target."""


@dataclass
class HeadConfig:
    target_architecture: str
    target_model_type: str
    hidden_size: int
    vocab_size: int
    num_hidden_layers: int
    num_stages: int
    stage_layers: list[int]
    anchors: list[int]
    num_draft_layers: int
    draft_vocab_size: int
    #: Overrides applied to a copy of the target's config to build the tower layers.
    layer_overrides: dict[str, Any] = field(default_factory=dict)
    trained: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = 1
    #: How model.safetensors stores the 2-D weights: a key of ``WEIGHT_FORMATS``.
    weight_format: str = "float"

    @property
    def num_types(self) -> int:
        return len(self.anchors)


def write_config(head_dir: str, cfg: HeadConfig) -> None:
    os.makedirs(head_dir, exist_ok=True)
    block = dataclasses.asdict(cfg)
    block["format_version"] = WEIGHT_FORMATS[cfg.weight_format]
    doc = {"architectures": [HEAD_ARCHITECTURE], "model_type": "spd_head", "spd": block}
    with open(os.path.join(head_dir, "config.json"), "w") as f:
        json.dump(doc, f, indent=2)


def read_config(head_dir: str) -> HeadConfig:
    path = os.path.join(head_dir, "config.json")
    if not os.path.isdir(head_dir):
        raise HeadError(f"spd: head directory {head_dir!r} does not exist")
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise HeadError(f"spd: head {head_dir!r} has no config.json (is it a head directory?)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise HeadError(f"spd: head config {path!r} is unreadable: {e}") from None
    block = doc.get("spd") if isinstance(doc, dict) else None
    if not isinstance(block, dict):
        raise HeadError(f"spd: {path!r} has no 'spd' block: not an SPD draft head")
    known = {f.name for f in dataclasses.fields(HeadConfig)}
    try:
        cfg = HeadConfig(**{k: v for k, v in block.items() if k in known})
    except TypeError as e:
        raise HeadError(f"spd: {path!r}: incomplete 'spd' block ({e})") from None
    if not 1 <= cfg.format_version <= FORMAT_VERSION:
        raise HeadError(f"spd: {path!r}: head format {cfg.format_version}, this vllm_spd reads 1 to {FORMAT_VERSION}")
    if cfg.weight_format not in WEIGHT_FORMATS:
        raise HeadError(f"spd: {path!r}: unknown weight_format {cfg.weight_format!r}, "
                        f"this vllm_spd reads {sorted(WEIGHT_FORMATS)}")
    if not os.path.isfile(os.path.join(head_dir, WEIGHTS_FILE)):
        raise HeadError(f"spd: head {head_dir!r} has no {WEIGHTS_FILE}")
    return cfg


def check_fits_target(cfg: HeadConfig, head_dir: str, hf_config: Any, num_stages: int,
                      stage_layers: list[int] | None, target: str | None = None) -> None:
    """Raise HeadError naming each mismatch between a head and the deployment; with
    ``target`` (the target model path) the message also says how to get a head that fits."""
    problems = []
    for name, head_value, target_value in (
        ("hidden_size", cfg.hidden_size, hf_config.hidden_size),
        ("vocab_size", cfg.vocab_size, hf_config.vocab_size),
        ("num_hidden_layers", cfg.num_hidden_layers, hf_config.num_hidden_layers),
    ):
        if head_value != target_value:
            problems.append(f"{name}: head {head_value}, target {target_value}")
    same_target = not problems
    if cfg.num_stages != num_stages:
        problems.append(f"num_stages: head trained for {cfg.num_stages}, config asks {num_stages}")
    if stage_layers is not None and list(stage_layers) != list(cfg.stage_layers):
        problems.append(f"stage_layers: head {cfg.stage_layers}, config {stage_layers}")
    if not problems:
        return
    msg = f"spd: head {head_dir!r} does not fit the target: " + "; ".join(problems)
    if target is not None:
        msg += ". " + how_to_get_head(target, num_stages, stage_layers)
        if same_target and cfg.num_stages != num_stages:
            msg += f" Or use this head as it is with num_stages={cfg.num_stages}"
            if stage_layers is not None and list(stage_layers) != list(cfg.stage_layers):
                msg += f" and stage_layers={cfg.stage_layers}"
            msg += "."
    raise HeadError(msg)


#: Prompts the target invents and answers in :func:`train_command`: the smallest training
#: run that needs no data files (README's recipe).
TRAIN_INVENT_PROMPTS = 20000


def train_command(target: str, num_stages: int, stage_layers: list[int] | None = None,
                  out: str | None = None) -> str:
    """A ``python -m vllm_spd.train`` command line that trains a head for this deployment,
    runnable as written (no data files needed: the target answers prompts it invents).
    ``out`` defaults to the first place :func:`find_default_head` looks, so the plugin
    finds the head without being told."""
    out = out or default_head_dirs(target, num_stages)[0]
    cmd = f"python -m vllm_spd.train --target {target} --num-stages {num_stages}"
    if stage_layers is not None:
        cmd += " --stage-layers " + ",".join(str(int(n)) for n in stage_layers)
    return cmd + f" --invent {TRAIN_INVENT_PROMPTS} --out {out}"


def how_to_get_head(target: str, num_stages: int, stage_layers: list[int] | None = None) -> str:
    """One sentence telling a user how to get a head for ``target`` at ``num_stages``."""
    return (f"Train one that fits with `{train_command(target, num_stages, stage_layers)}` "
            f"(or --data CONVERSATIONS.jsonl instead of --invent); a head for num_stages={num_stages} "
            f"is found without naming it as speculative_config model in "
            f"{default_head_dirs(target, num_stages)}.")


#: Heads shipped inside the package: ``heads/<target name>/s<n>/`` (see default_head_dirs).
SHIPPED_HEADS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "heads")


def target_name(target: str) -> str:
    """The name a target's heads are filed under in the package: the last part of its path
    or hub id, or the upstream name of a model built by ``offline_models``::

        /x/SmolLM2-135M-Instruct, HuggingFaceTB/SmolLM2-135M-Instruct -> SmolLM2-135M-Instruct
        ~/.cache/vllm_spd/models/smollm2 (the embedded target)        -> SmolLM2-135M-Instruct
    """
    from vllm_spd.offline_models import upstream_name

    return upstream_name(target) or os.path.basename(target.rstrip("/"))


def cache_head_dir(target: str, num_stages: int) -> str:
    """``$VLLM_SPD_CACHE/heads/<target with / -> -->/s<n>``: where ``make head`` writes."""
    name = target.rstrip("/").replace("/", "--")
    return os.path.join(envs.cache_dir(), "heads", name, f"s{num_stages}")


def default_head_dirs(target: str, num_stages: int) -> list[str]:
    """Where a head is looked for when the config names none, in order.

    1. ``<target dir>/spd_head_s<n>`` beside a local target's weights;
    2. ``$VLLM_SPD_CACHE/heads/<target with / -> -->/s<n>`` (default ``~/.cache/vllm_spd``);
    3. ``vllm_spd/heads/<target name>/s<n>`` inside the installed package (see
       :func:`target_name`), for heads shipped with vllm_spd. Last, so a user's own head
       wins. pyproject.toml's package-data takes its ``*.json`` and ``*.safetensors``.
    """
    dirs = []
    if os.path.isdir(target):
        dirs.append(os.path.join(target, f"spd_head_s{num_stages}"))
    dirs.append(cache_head_dir(target, num_stages))
    dirs.append(os.path.join(SHIPPED_HEADS_DIR, target_name(target), f"s{num_stages}"))
    return dirs


def find_default_head(target: str, num_stages: int) -> str | None:
    for d in default_head_dirs(target, num_stages):
        if os.path.isfile(os.path.join(d, "config.json")):
            return d
    return None


def quantize_int8(weight) -> tuple:
    """``(q, scale)``: symmetric int8 per output row, ``weight ~ q * scale[:, None]``.

    Row ``[0.5, -1.27, 0.0]``: scale ``1.27 / 127 = 0.01``, q ``[50, -127, 0]``.
    """
    import torch

    w = weight.float()
    scale = w.abs().amax(1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def store_tensors(tensors: dict, weight_format: str) -> dict:
    """The tensors as ``model.safetensors`` holds them in ``weight_format``."""
    if weight_format == "float":
        return dict(tensors)
    out = {}
    for name, value in tensors.items():
        if value.dim() == 2 and value.is_floating_point():
            out[name], out[name + SCALE_SUFFIX] = quantize_int8(value)
        else:
            out[name] = value
    return out


def dequantize(stored: dict, head_dir: str) -> dict:
    """Float32 weights from stored ones: each int8 tensor times its per-row scale; the
    other tensors as they are. Raises HeadError for an int8 tensor without a fitting scale."""
    import torch

    out, problems = {}, []
    for name, value in stored.items():
        if name.endswith(SCALE_SUFFIX):
            base = stored.get(name[:-len(SCALE_SUFFIX)])
            if base is None or base.dtype != torch.int8:
                problems.append(f"{name} is not beside an int8 tensor {name[:-len(SCALE_SUFFIX)]}")
            continue
        if value.dtype != torch.int8:
            out[name] = value
            continue
        scale = stored.get(name + SCALE_SUFFIX)
        if value.dim() != 2:
            problems.append(f"int8 tensor {name} has shape {tuple(value.shape)}; only 2-D weights are int8")
        elif scale is None:
            problems.append(f"int8 tensor {name} has no {name + SCALE_SUFFIX}")
        elif tuple(scale.shape) != (value.shape[0],) or not scale.is_floating_point():
            problems.append(f"{name + SCALE_SUFFIX} is {scale.dtype} {tuple(scale.shape)}, "
                            f"expected float [{value.shape[0]}] (one scale per row of {name})")
        else:
            out[name] = value.float() * scale.float()[:, None]
    if problems:
        raise HeadError(f"spd: head {head_dir!r}: malformed int8 weights: " + "; ".join(problems))
    return out


def load_tensors(head_dir: str) -> dict:
    """The head's tensors with int8 weights dequantized to float32 (float ones as stored):
    the one place where every loader (the engine, ``--init``, ``pack``) reads a head."""
    from safetensors.torch import load_file

    path = os.path.join(head_dir, WEIGHTS_FILE)
    try:
        stored = load_file(path)
    except Exception as e:  # safetensors raises several types for a bad file
        raise HeadError(f"spd: head weights {path!r} are unreadable: {e}") from None
    return dequantize(stored, head_dir)


def check_tensors(cfg: HeadConfig, tensors: dict, head_dir: str) -> None:
    """Shapes that must hold for any head, whatever its tower layer class."""
    H, K = cfg.hidden_size, cfg.draft_vocab_size
    expected = {f"aggr_projs.{a}.weight": (H, (a + 1) * H) for a in range(cfg.num_types)}
    expected["lm_head.weight"] = (K, H)
    expected["draft_token_ids"] = (K,)
    problems = []
    for name, shape in expected.items():
        if name not in tensors:
            problems.append(f"missing {name}")
        elif tuple(tensors[name].shape) != shape:
            problems.append(f"{name} has shape {tuple(tensors[name].shape)}, expected {shape}")
    layers = {k.split(".")[1] for k in tensors if k.startswith("layers.")}
    if len(layers) != cfg.num_draft_layers:
        problems.append(f"{len(layers)} tower layers in weights, config says {cfg.num_draft_layers}")
    if "draft_token_ids" in tensors and tensors["draft_token_ids"].numel():
        ids = tensors["draft_token_ids"]
        if int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_size or bool((ids[1:] <= ids[:-1]).any()):
            problems.append("draft_token_ids must be strictly increasing ids inside the vocabulary")
    if problems:
        raise HeadError(f"spd: head {head_dir!r}: " + "; ".join(problems))


def save_head(head_dir: str, cfg: HeadConfig, tensors: dict) -> None:
    """Write a head: float ``tensors``, stored in ``cfg.weight_format``."""
    from safetensors.torch import save_file

    check_tensors(cfg, tensors, head_dir)
    os.makedirs(head_dir, exist_ok=True)
    stored = store_tensors(tensors, cfg.weight_format)
    save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(head_dir, WEIGHTS_FILE))
    write_config(head_dir, cfg)
