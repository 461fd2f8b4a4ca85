"""int8 heads (``weight_format: int8-rowwise``) and where shipped heads are found: packing
round-trips within half a scale step, the draft module drafts as from the float head,
malformed int8 weights fail clearly, and a head inside the package is looked at last."""

import json
import os
import shutil
import tomllib

import pytest
import torch
from safetensors.torch import load_file, save_file

from vllm_spd import checkpoint, head as head_mod
from vllm_spd.core.layout import StageLayout
from vllm_spd.head import init_head

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def float_head(tiny_qwen3, tmp_path_factory):
    """A random n=2 head with 2 tower layers and a 1000-token draft vocabulary, its
    weights spread like a trained head's (no constant rows)."""
    out = str(tmp_path_factory.mktemp("float") / "head")
    init_head(tiny_qwen3, 2, out, num_draft_layers=2, draft_token_ids=list(range(3, 3003, 3)))
    tensors = load_file(os.path.join(out, checkpoint.WEIGHTS_FILE))
    gen = torch.Generator().manual_seed(1)
    for name, value in tensors.items():
        if value.is_floating_point():   # norm weights too, so "1-D stays exact" can fail
            tensors[name] = value + torch.randn(value.shape, generator=gen) * 0.05
    save_file(tensors, os.path.join(out, checkpoint.WEIGHTS_FILE))
    return out


@pytest.fixture(scope="module")
def int8_head(float_head, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("int8") / "head")
    head_mod.main(["pack", "--int8", float_head, out])
    return out


def test_quantize_worked_example():
    q, scale = checkpoint.quantize_int8(torch.tensor([[0.5, -1.27, 0.0], [0.0, 0.0, 0.0]]))
    assert q.dtype == torch.int8 and q.tolist() == [[50, -127, 0], [0, 0, 0]]
    torch.testing.assert_close(scale, torch.tensor([0.01, 1.0]))   # a zero row gets scale 1


def test_pack_round_trip(float_head, int8_head):
    original = load_file(os.path.join(float_head, checkpoint.WEIGHTS_FILE))
    stored = load_file(os.path.join(int8_head, checkpoint.WEIGHTS_FILE))
    loaded = checkpoint.load_tensors(int8_head)
    assert set(loaded) == set(original)
    two_d = [k for k, v in original.items() if v.dim() == 2]
    cfg = checkpoint.read_config(float_head)
    assert len(two_d) == cfg.num_types + 2 * 7 + 1    # projections, 7 per Qwen3 layer, lm_head
    for name in two_d:
        q, scale = stored[name], stored[name + checkpoint.SCALE_SUFFIX]
        assert q.dtype == torch.int8 and scale.dtype == torch.float32
        torch.testing.assert_close(scale, original[name].abs().amax(1) / 127)
        assert loaded[name].dtype == torch.float32
        error = (loaded[name] - original[name]).abs()
        assert bool((error <= scale[:, None] / 2 * (1 + 1e-5)).all()), name
        assert float(error.max()) > 0            # it was quantized, not copied
    for name in set(original) - set(two_d):      # norm weights and draft_token_ids
        assert torch.equal(loaded[name], original[name]) and loaded[name].dtype == original[name].dtype
    # int8 plus one float32 scale per row: about a quarter of float32
    ratio = os.path.getsize(os.path.join(int8_head, checkpoint.WEIGHTS_FILE)) / \
        os.path.getsize(os.path.join(float_head, checkpoint.WEIGHTS_FILE))
    assert 0.24 < ratio < 0.3, ratio


def test_packed_config(float_head, int8_head):
    cfg, src = checkpoint.read_config(int8_head), checkpoint.read_config(float_head)
    assert (cfg.weight_format, cfg.format_version) == ("int8-rowwise", 2)
    assert (src.weight_format, src.format_version) == ("float", 1)   # older readers still read it
    assert cfg.provenance["packed"]["from"] == os.path.abspath(float_head)
    assert {k: v for k, v in cfg.provenance.items() if k != "packed"} == src.provenance
    assert dataclass_fields(cfg, "provenance", "format_version", "weight_format") == \
        dataclass_fields(src, "provenance", "format_version", "weight_format")


def dataclass_fields(cfg, *leave_out):
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in leave_out}


def test_pack_cli_prints_sizes_and_error(float_head, tmp_path, capsys):
    out = str(tmp_path / "bf16")
    head_mod.main(["pack", "--dtype", "bfloat16", float_head, out])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["bytes_after"] < 0.51 * report["bytes_before"]
    assert 0 < report["max_abs_error"] < 0.01
    assert checkpoint.read_config(out).weight_format == "float"
    assert checkpoint.load_tensors(out)["lm_head.weight"].dtype == torch.bfloat16
    head_mod.main(["pack", "--int8", out, str(tmp_path / "int8")])   # from bf16 to int8
    first, last = capsys.readouterr().out.strip().splitlines()
    assert "MB ->" in first and "max abs weight error" in first
    assert json.loads(last)["weight_format"] == "int8-rowwise"
    with pytest.raises(checkpoint.HeadError, match="writes a copy"):
        head_mod.pack_head(out, out, int8=True)


def test_draft_module_drafts_as_from_the_float_head(tiny_qwen3, float_head, int8_head):
    """The trained computation (``vllm_spd.train.model``, the PDM's twin) loaded from
    either head: logits close, argmax the same on nearly every row."""
    from transformers import AutoModelForCausalLM

    from vllm_spd.train.model import DraftModule

    target = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32).eval()
    cfg = checkpoint.read_config(float_head)
    lay = StageLayout.build(cfg.num_hidden_layers, cfg.num_stages, cfg.anchors, cfg.stage_layers)
    ids = checkpoint.load_tensors(float_head)["draft_token_ids"]
    logits = {}
    torch.manual_seed(0)
    B, S, H = 4, 32, cfg.hidden_size
    anchors = [torch.randn(B, S, H) for _ in cfg.anchors]
    pos = torch.arange(S)[None].repeat(B, 1)
    causal = torch.zeros(B, 1, S, S).masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1),
                                                  torch.finfo(torch.float32).min)
    for name, head in (("float", float_head), ("int8", int8_head)):
        mod = DraftModule.from_target(target, lay, cfg.num_draft_layers, ids)
        mod.load_head_tensors(checkpoint.load_tensors(head))
        with torch.no_grad():
            top = lay.num_types - 1
            logits[name] = mod(anchors, pos, causal, [top], decode_type=top).reshape(B * S, -1)
    f, q = logits["float"], logits["int8"]
    assert f.shape == (B * S, cfg.draft_vocab_size)
    rel = float((f - q).norm() / f.norm())
    assert 0 < rel < 0.02, rel
    agree = float((f.argmax(-1) == q.argmax(-1)).float().mean())
    assert agree >= 0.9, agree
    assert float((f.argmax(-1) == f.roll(1, 0).argmax(-1)).float().mean()) < 0.5   # rows differ


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("lm_head.weight.scale"), r"int8 tensor lm_head\.weight has no lm_head\.weight\.scale"),
    (lambda t: t.update({"lm_head.weight.scale": t["lm_head.weight.scale"][:-1]}),
     r"lm_head\.weight\.scale is torch\.float32 \(999,\), expected float \[1000\]"),
    (lambda t: t.update({"aggr_projs.0.weight.scale": t["aggr_projs.0.weight.scale"].to(torch.int32)}),
     r"aggr_projs\.0\.weight\.scale is torch\.int32 \(128,\), expected float \[128\]"),
    (lambda t: t.update({"aggr_projs.0.weight": t["aggr_projs.0.weight"].float()}),
     r"aggr_projs\.0\.weight\.scale is not beside an int8 tensor aggr_projs\.0\.weight"),
    (lambda t: t.update({"layers.0.input_layernorm.weight": torch.ones(128, dtype=torch.int8)}),
     r"int8 tensor layers\.0\.input_layernorm\.weight has shape \(128,\); only 2-D weights are int8"),
])
def test_malformed_int8_head(int8_head, tmp_path, edit, message):
    bad = tmp_path / "bad"
    shutil.copytree(int8_head, bad)
    tensors = load_file(bad / checkpoint.WEIGHTS_FILE)
    edit(tensors)
    save_file(tensors, bad / checkpoint.WEIGHTS_FILE)
    with pytest.raises(checkpoint.HeadError, match=r"^spd: head .*: malformed int8 weights: .*" + message):
        checkpoint.load_tensors(str(bad))


def test_config_versions(float_head, tmp_path):
    def with_block(**changes):
        d = tmp_path / "_".join(f"{k}={v}" for k, v in changes.items())
        shutil.copytree(float_head, d)
        doc = json.loads((d / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                doc["spd"].pop(key)
            else:
                doc["spd"][key] = value
        (d / "config.json").write_text(json.dumps(doc))
        return str(d)

    old = checkpoint.read_config(with_block(weight_format=None))   # written before int8 heads
    assert (old.weight_format, old.format_version) == ("float", 1)
    with pytest.raises(checkpoint.HeadError, match=r"^spd: .*head format 3, this vllm_spd reads 1 to 2"):
        checkpoint.read_config(with_block(format_version=3))
    with pytest.raises(checkpoint.HeadError, match=r"^spd: .*unknown weight_format 'int4'"):
        checkpoint.read_config(with_block(weight_format="int4"))


# ---- where a shipped head is found ------------------------------------------------------

def test_target_name(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_SPD_CACHE", str(tmp_path))
    assert checkpoint.target_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"
    assert checkpoint.target_name("/x/SmolLM2-135M-Instruct/") == "SmolLM2-135M-Instruct"
    embedded = str(tmp_path / "models" / "smollm2")      # offline_models.smollm2()'s directory
    assert checkpoint.target_name(embedded) == "SmolLM2-135M-Instruct"
    assert checkpoint.target_name("/elsewhere/smollm2") == "smollm2"
    assert checkpoint.target_name(str(tmp_path / "models" / "tiny-qwen3")) == "tiny-qwen3"


def test_shipped_head_found_last(tiny_qwen3, float_head, tmp_path, monkeypatch):
    from test_config import engine_config

    monkeypatch.setenv("VLLM_SPD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoint, "SHIPPED_HEADS_DIR", str(tmp_path / "package" / "heads"))
    shipped = str(tmp_path / "package" / "heads" / "tiny-qwen3" / "s2")
    user = checkpoint.cache_head_dir(tiny_qwen3, 2)
    assert checkpoint.default_head_dirs(tiny_qwen3, 2) == [os.path.join(tiny_qwen3, "spd_head_s2"), user, shipped]
    assert checkpoint.default_head_dirs("HuggingFaceTB/SmolLM2-135M-Instruct", 4) == [
        str(tmp_path / "cache" / "heads" / "HuggingFaceTB--SmolLM2-135M-Instruct" / "s4"),
        str(tmp_path / "package" / "heads" / "SmolLM2-135M-Instruct" / "s4")]
    assert checkpoint.find_default_head(tiny_qwen3, 2) is None
    shutil.copytree(float_head, shipped)
    assert checkpoint.find_default_head(tiny_qwen3, 2) == shipped
    spec = engine_config(tiny_qwen3, {"method": "spd", "num_stages": 2}).speculative_config
    assert (spec.drafter, spec.model) == ("head", shipped)
    shutil.copytree(float_head, user)                   # the user's own head wins
    assert checkpoint.find_default_head(tiny_qwen3, 2) == user
    # Training writes where the user's heads are found, never into the package.
    out = checkpoint.train_command("HuggingFaceTB/SmolLM2-135M-Instruct", 4).split("--out ")[1]
    assert out == checkpoint.cache_head_dir("HuggingFaceTB/SmolLM2-135M-Instruct", 4)


def test_package_data_takes_shipped_heads():
    from fnmatch import fnmatch

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["vllm_spd"]
    rel = os.path.relpath(checkpoint.SHIPPED_HEADS_DIR, os.path.dirname(checkpoint.__file__))
    for name in ("config.json", checkpoint.WEIGHTS_FILE):
        path = os.path.join(rel, "SmolLM2-135M-Instruct", "s4", name)
        assert any(fnmatch(path, p) for p in patterns), path
    assert not any(fnmatch(os.path.join(rel, "SmolLM2-135M-Instruct", "s4", "train_log.jsonl"), p) for p in patterns)


# ---- inside vLLM ------------------------------------------------------------------------

def test_int8_head_in_the_engine(tiny_qwen3, tmp_path):
    """vLLM's draft module loads an int8 head (pdm.load_head, through load_tensors): outputs
    stay the target's, and the mostly-right mirror head (alpha > 0.6 in float,
    test_e2e_greedy) still drafts mostly right."""
    from spd_models import mirror_head, predictable_target
    from test_e2e_greedy import generate

    target = predictable_target(tiny_qwen3, str(tmp_path / "target"))
    packed = str(tmp_path / "int8")
    head_mod.pack_head(mirror_head(target, 2, str(tmp_path / "float")), packed, int8=True)
    prompts = ["def fibonacci(n):", "The capital of France is", "Once upon a time", "while True:"]
    reference, _ = generate(target, prompts=prompts, max_tokens=32)
    out, c = generate(target, {"method": "spd", "num_stages": 2, "model": packed}, max_tokens=32, prompts=prompts)
    assert out == reference
    alpha = c["vllm:spec_decode_num_accepted_tokens"] / c["vllm:spec_decode_num_draft_tokens"]
    assert alpha > 0.6, alpha
