"""Config acceptance and every clear error, against real vLLM (no engine started:
``EngineArgs.create_engine_config`` is where vLLM validates a speculative config)."""

import json
import os
import subprocess
import sys

import pytest

from vllm_spd import plugin
from vllm_spd.head import init_head


def engine_config(model, spec, **kw):
    from vllm.engine.arg_utils import EngineArgs

    args = dict(model=model, dtype="float32", max_model_len=256, skip_tokenizer_init=True,
                enforce_eager=True, speculative_config=spec)
    args.update(kw)
    return EngineArgs(**args).create_engine_config()


@pytest.fixture(scope="module")
def head2(tiny_qwen3, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("head") / "h2")
    init_head(tiny_qwen3, 2, out)
    return out


def test_spd_config_accepted(tiny_qwen3):
    cfg = engine_config(tiny_qwen3, {"method": "spd", "num_stages": 3, "cycles_per_step": 5})
    spec = cfg.speculative_config
    assert type(spec).__name__ == "SPDSpeculativeConfig"
    assert (spec.method, spec.num_stages, spec.cycles_per_step, spec.num_speculative_tokens) == ("spd", 3, 5, 4)
    assert spec.drafter == "ngram"            # no head anywhere: weightless drafter
    assert cfg.parallel_config.worker_cls == "vllm_spd.engine.worker.SPDCPUWorker"
    assert cfg.scheduler_config.scheduler_cls == "vllm_spd.engine.scheduler.SPDScheduler"
    assert cfg.parallel_config.pipeline_parallel_size == 1   # CPU: all stages in one worker
    assert not cfg.cache_config.enable_prefix_caching
    assert "speculative method 'spd'" in cfg._get_v2_model_runner_unsupported_features()
    assert not cfg.use_v2_model_runner


def test_defaults_and_head(tiny_qwen3, head2):
    spec = engine_config(tiny_qwen3, {"method": "spd", "model": head2}).speculative_config
    assert (spec.num_stages, spec.cycles_per_step, spec.drafter, spec.model) == (2, 32, "head", head2)
    assert spec.num_speculative_tokens == 31
    assert spec.stage_layers == [4, 4]


@pytest.mark.parametrize("placement, lag", [("single_worker", 0), ("pipeline", 1)])
def test_verdict_lag_default_follows_placement(tiny_qwen3, placement, lag):
    """Late verdicts pay only where stages run at once (one per rank); an explicit value wins."""
    spd = {"method": "spd", "num_stages": 2, "stage_placement": placement}
    cfg = engine_config(tiny_qwen3, spd)
    assert cfg.parallel_config.pipeline_parallel_size == (2 if placement == "pipeline" else 1)
    assert (cfg.speculative_config.verdict_lag, cfg.speculative_config.pipeline_depth) == (lag, 2 + lag)
    cfg = engine_config(tiny_qwen3, {**spd, "verdict_lag": 1 - lag})
    assert cfg.speculative_config.verdict_lag == 1 - lag


def test_default_head_location_is_found(tiny_qwen3, head2, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("VLLM_SPD_CACHE", str(tmp_path))
    name = tiny_qwen3.rstrip("/").replace("/", "--")
    shutil.copytree(head2, tmp_path / "heads" / name / "s2")
    spec = engine_config(tiny_qwen3, {"method": "spd", "num_stages": 2}).speculative_config
    assert spec.drafter == "head" and spec.model == str(tmp_path / "heads" / name / "s2")


def test_non_spd_configs_untouched(tiny_qwen3):
    spec = engine_config(tiny_qwen3, {"method": "ngram", "num_speculative_tokens": 2,
                                      "prompt_lookup_max": 3}).speculative_config
    assert type(spec).__name__ == "SpeculativeConfig" and spec.method == "ngram"


@pytest.mark.parametrize("spec, kw, message", [
    ({"num_stages": 0}, {}, r"num_stages=0 must be between 1 and the target's 8 decoder layers"),
    ({"num_stages": 9}, {}, r"num_stages=9 must be between 1 and the target's 8 decoder layers"),
    ({"num_stages": 2}, {"pipeline_parallel_size": 3}, r"pipeline_parallel_size=3 must be 1 .* or num_stages=2"),
    ({"num_stages": 2, "stages": 4}, {}, r"unknown key\(s\) \['stages'\]"),
    ({"num_stage": 2}, {}, r"unknown key\(s\) \['num_stage'\] in speculative_config \(did you mean 'num_stages'\?\); "
                           r"valid keys: \["),
    ({"num_stages": 2, "cycles_per_step": 1}, {}, r"cycles_per_step=1 must be >= num_stages \+ verdict_lag=2"),
    ({"num_stages": 2, "cycles_per_step": 2, "verdict_lag": 1}, {},
     r"cycles_per_step=2 must be >= num_stages \+ verdict_lag=3"),
    ({"num_stages": 2, "verdict_lag": 2}, {}, r"^spd: verdict_lag=2: Input should be less than or equal to 1$"),
    ({"num_stages": 2, "stage_layers": [5, 5]}, {}, r"stage_layers=\[5, 5\] must have 2 positive entries"),
    ({"num_stages": 2, "drafter": "head"}, {}, r"drafter='head' but no head given and none found"),
    ({"num_stages": 2, "drafter": "hybrid"}, {}, r"drafter='hybrid' but no head given and none found"),
    ({"num_stages": 2, "num_speculative_tokens": 7}, {}, r"num_speculative_tokens=7 is derived from cycles_per_step"),
    ({"num_stages": 2}, {"logits_processors": ["vllm.v1.sample.logits_processor:MinPLogitsProcessor"]},
     r"custom logits processors \(--logits-processors\) are not applied"),
])
def test_config_errors(tiny_qwen3, spec, kw, message):
    with pytest.raises(ValueError, match=message) as e:
        engine_config(tiny_qwen3, {"method": "spd", **spec}, **kw)
    assert str(e.value).startswith("spd: ") and "validation error" not in str(e.value), str(e.value)


def test_unknown_key_without_a_near_one(tiny_qwen3):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['zzz'\] in speculative_config; valid") as e:
        engine_config(tiny_qwen3, {"method": "spd", "zzz": 1})
    assert "did you mean" not in str(e.value)


def _train_argv(message):
    """The ``python -m vllm_spd.train ...`` command quoted in ``message``, as the trainer
    parses it (so a flag it lacks, or a missing required one, fails here)."""
    import re
    import shlex

    from vllm_spd.train.trainer import build_parser

    cmd = re.search(r"`(python -m vllm_spd\.train [^`]*)`", message)
    assert cmd, message
    args = build_parser().parse_args(shlex.split(cmd.group(1))[3:])
    assert args.data or args.generate_from or args.invent, "the trainer would stop: no training data"
    return args


def test_head_missing(tiny_qwen3, tmp_path):
    with pytest.raises(ValueError, match="^spd: head directory .* does not exist"):
        engine_config(tiny_qwen3, {"method": "spd", "model": str(tmp_path / "nope")})


def test_head_unreadable(tiny_qwen3, tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="^spd: .*unreadable"):
        engine_config(tiny_qwen3, {"method": "spd", "model": str(tmp_path)})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(ValueError, match="^spd: .*no 'spd' block"):
        engine_config(tiny_qwen3, {"method": "spd", "model": str(tmp_path)})


def test_head_for_other_target(tiny_qwen3, qwen3_real_vocab, tmp_path):
    init_head(qwen3_real_vocab, 2, str(tmp_path / "h"))
    with pytest.raises(ValueError, match=r"^spd: head .*vocab_size: head 151936, target 4096.*"
                                         r"num_hidden_layers: head 4, target 8") as e:
        engine_config(tiny_qwen3, {"method": "spd", "model": str(tmp_path / "h")})
    args = _train_argv(str(e.value))          # a head for this target, not the head's one
    assert (args.target, args.num_stages) == (tiny_qwen3, 2)
    assert "use this head as it is" not in str(e.value)


def test_head_for_other_num_stages(tiny_qwen3, head2):
    """The error says how to get a head that fits: the train command for num_stages 4,
    writing where the plugin looks by default, and that this head works at num_stages 2."""
    import os

    with pytest.raises(ValueError, match="^spd: head .*num_stages: head trained for 2, config asks 4") as e:
        engine_config(tiny_qwen3, {"method": "spd", "num_stages": 4, "model": head2})
    message = str(e.value)
    default_dir = os.path.join(tiny_qwen3, "spd_head_s4")
    assert f"python -m vllm_spd.train --target {tiny_qwen3} --num-stages 4 --invent " in message
    args = _train_argv(message)
    assert (args.target, args.num_stages, args.out, args.stage_layers) == (tiny_qwen3, 4, default_dir, None)
    assert repr(default_dir) in message                   # where a num_stages=4 head is found
    assert "use this head as it is with num_stages=2" in message


def test_head_for_other_stage_split(tiny_qwen3, head2):
    with pytest.raises(ValueError, match=r"stage_layers: head \[4, 4\], config \[5, 3\]") as e:
        engine_config(tiny_qwen3, {"method": "spd", "num_stages": 2, "stage_layers": [5, 3], "model": head2})
    args = _train_argv(str(e.value))
    assert (args.num_stages, args.stage_layers) == (2, [5, 3])


def test_no_head_warning_gives_a_working_train_command(tiny_qwen3, tmp_path, monkeypatch):
    from vllm_spd import config

    monkeypatch.setenv("VLLM_SPD_CACHE", str(tmp_path))
    warnings = []
    monkeypatch.setattr(config.logger, "warning", lambda msg, *a: warnings.append(msg % a))
    spec = engine_config(tiny_qwen3, {"method": "spd", "num_stages": 4}).speculative_config
    assert spec.drafter == "ngram"
    (message,) = [w for w in warnings if "no draft head" in w]
    args = _train_argv(message)
    assert (args.target, args.num_stages) == (tiny_qwen3, 4)
    import os

    assert args.out == os.path.join(tiny_qwen3, "spd_head_s4")    # found there next time
    with pytest.raises(ValueError, match="no head given and none found") as e:
        engine_config(tiny_qwen3, {"method": "spd", "num_stages": 4, "drafter": "head"})
    assert _train_argv(str(e.value)).num_stages == 4


def test_head_weights_corrupt(tiny_qwen3, head2, tmp_path):
    import shutil

    bad = tmp_path / "h"
    shutil.copytree(head2, bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="^spd: head weights .* are unreadable"):
        from vllm_spd import checkpoint

        checkpoint.load_tensors(str(bad))


def _save_config(path, cfg):
    cfg.save_pretrained(path)
    return str(path)


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config

    model = _save_config(tmp_path, GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128,
                                              architectures=["GPT2LMHeadModel"]))
    with pytest.raises(ValueError, match=r"target architecture \['GPT2LMHeadModel'\] is not supported"):
        engine_config(model, {"method": "spd", "num_stages": 2})


def test_hybrid_linear_attention_refused():
    from types import SimpleNamespace

    from vllm_spd.config import check_target

    qwen35 = SimpleNamespace(architectures=["Qwen3_5ForCausalLM"], model_type="qwen3_5_text",
                             layer_types=["linear_attention", "full_attention"], num_hidden_layers=2)
    with pytest.raises(ValueError, match="hybrid linear-attention model"):
        check_target(qwen35)


def test_version_gate(monkeypatch):
    monkeypatch.delenv("VLLM_SPD_SKIP_VERSION_CHECK", raising=False)
    with pytest.raises(RuntimeError, match=r"^spd: .*found vLLM 0\.33\.0.*VLLM_SPD_SKIP_VERSION_CHECK=1"):
        plugin.check_vllm_version("0.33.0")
    plugin.check_vllm_version("0.32.0+cpu")
    monkeypatch.setenv("VLLM_SPD_SKIP_VERSION_CHECK", "1")
    plugin.check_vllm_version("0.33.0")


def test_register_is_idempotent():
    from vllm.engine.arg_utils import EngineArgs

    plugin.register()
    before = EngineArgs.create_engine_config
    plugin._registered = False
    plugin.register()
    assert EngineArgs.create_engine_config is before
    assert not getattr(before.__wrapped__, "_spd_wrapped", False)


def test_plugin_excluded_by_vllm_plugins(tiny_qwen3):
    code = (
        "from vllm.engine.arg_utils import EngineArgs\n"
        f"EngineArgs(model={tiny_qwen3!r}, skip_tokenizer_init=True,"
        " speculative_config={'method': 'spd', 'num_stages': 2}).create_engine_config()\n")
    env = dict(os.environ, VLLM_PLUGINS="lora_filesystem_resolver")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "spd: speculative method 'spd' needs the vllm_spd plugin, which vLLM did not load" in proc.stderr
    assert "VLLM_PLUGINS" in proc.stderr


def test_fused_kernels_turned_on_for_one_worker_unless_chosen():
    """One-worker SPD runs decoder layers outside vLLM's compiled forward, so vLLM's fused
    custom ops (base mode 'all') and its fused RMSNorm kernels (IR op priority 'vllm_c')
    are turned on, unless the user chose otherwise."""
    from types import SimpleNamespace

    from vllm.config import CompilationConfig, KernelConfig
    from vllm.config.kernel import IrOpPriorityConfig

    from vllm_spd.plugin import fused_kernels_on

    def engine_args(cc, ir=None, kc=None):              # as EngineArgs holds them
        return SimpleNamespace(compilation_config=cc, ir_op_priority=ir or IrOpPriorityConfig(),
                               kernel_config=kc or KernelConfig())

    args = engine_args(CompilationConfig())
    assert fused_kernels_on(args) == ["custom_ops", "rms_norm", "fused_add_rms_norm"]
    assert args.compilation_config.custom_ops == ["all"]
    assert args.ir_op_priority.rms_norm == ["vllm_c"] == args.ir_op_priority.fused_add_rms_norm
    assert fused_kernels_on(args) == []                  # once
    chosen = engine_args(CompilationConfig(custom_ops=["none", "+rms_norm"]),
                         IrOpPriorityConfig(rms_norm=["native"]))
    assert fused_kernels_on(chosen) == ["fused_add_rms_norm"]
    assert chosen.compilation_config.custom_ops == ["none", "+rms_norm"]
    assert chosen.ir_op_priority.rms_norm == ["native"]
    in_kernel = engine_args(CompilationConfig(), kc=KernelConfig(
        ir_op_priority=IrOpPriorityConfig(rms_norm=["native"], fused_add_rms_norm=["native"])))
    assert fused_kernels_on(in_kernel) == ["custom_ops"]
    as_dict = SimpleNamespace(compilation_config={}, ir_op_priority={}, kernel_config={})
    assert fused_kernels_on(as_dict) == ["custom_ops", "rms_norm", "fused_add_rms_norm"]
    assert as_dict.compilation_config == {"custom_ops": ["all"]}
    assert as_dict.ir_op_priority == {"rms_norm": ["vllm_c"], "fused_add_rms_norm": ["vllm_c"]}
