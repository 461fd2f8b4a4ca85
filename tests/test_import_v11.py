"""Import of reference v11 checkpoints, on synthetic files of that layout."""

import os

import pytest
import torch
from safetensors.torch import load_file

from spd_models import mirror_head, predictable_target
from vllm_spd import checkpoint
from vllm_spd.import_v11 import import_v11


def to_v11(head_dir: str, path: str, **config_overrides) -> str:
    """Write one of our heads in the reference's v11 layout."""
    cfg = checkpoint.read_config(head_dir)
    ours = load_file(os.path.join(head_dir, "model.safetensors"))
    sd = {("spec_layers." + k[len("layers."):] if k.startswith("layers.") else k): v
          for k, v in ours.items() if k != "draft_token_ids"}
    config = {"hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size, "model_type": cfg.target_model_type,
              "base_model_path": "/somewhere/else", "draft_vocab_size": cfg.draft_vocab_size,
              "num_stages": cfg.num_stages, "num_spec_layers": cfg.num_draft_layers, "version": 11,
              "trained_with_use_deepest": True, "aggr_feature_bound": cfg.anchors,
              "num_aggr_types": len(cfg.anchors), "spec_intermediate_size_fallback": 9216,
              "draft_token_ids": ours["draft_token_ids"].tolist()}
    config.update(config_overrides)
    torch.save({"state_dict": sd, "config": config}, path)
    return path


@pytest.fixture(scope="module")
def mirror(tiny_qwen3, tmp_path_factory):
    root = tmp_path_factory.mktemp("v11")
    target = predictable_target(tiny_qwen3, str(root / "target"))
    return target, mirror_head(target, 2, str(root / "mirror"))


def test_import_round_trip_and_generation(mirror, tmp_path):
    from test_e2e_greedy import PROMPTS, assert_identical, generate

    target, head = mirror
    out = str(tmp_path / "imported")
    cfg = import_v11(to_v11(head, str(tmp_path / "m.pt")), target, out)
    assert cfg.trained and cfg.anchors == checkpoint.read_config(head).anchors
    a, b = load_file(os.path.join(head, "model.safetensors")), load_file(os.path.join(out, "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    reference, _ = generate(target, prompts=PROMPTS[:6], max_tokens=32)
    spd, counters = generate(target, {"method": "spd", "num_stages": 2, "model": out}, prompts=PROMPTS[:6], max_tokens=32)
    assert_identical(reference, spd)
    assert counters["vllm:spec_decode_num_accepted_tokens"] > 0.6 * counters["vllm:spec_decode_num_draft_tokens"]


@pytest.mark.parametrize("overrides, message", [
    ({"version": 10}, "only version 11"),
    ({"hidden_size": 999}, "hidden_size: checkpoint 999, target 128"),
    ({"draft_token_ids": None, "draft_vocab_size": 100}, "no draft_token_ids"),
    ({"stage_layers": [4, 4]}, "v12"),
])
def test_import_errors(mirror, tmp_path, overrides, message):
    target, head = mirror
    with pytest.raises(checkpoint.HeadError, match=message):
        import_v11(to_v11(head, str(tmp_path / "bad.pt"), **overrides), target, str(tmp_path / "out"))


def test_not_a_checkpoint(mirror, tmp_path):
    target, _ = mirror
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(checkpoint.HeadError, match="cannot read"):
        import_v11(str(tmp_path / "junk.pt"), target, str(tmp_path / "out"))
