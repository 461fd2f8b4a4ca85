"""benchmarks/decode_speed.py end to end on CPU (a tiny untied Qwen3 shape, bf16,
random weights): every system runs in its own process group, SPD on two pipeline
ranks; the oracle at alpha=1, replaying SPD's own recorded greedy output, must have
every draft accepted; the random draft module runs in bf16 and prices its cycle."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))


def test_decode_speed_cpu(tiny_qwen3, tmp_path, monkeypatch, capsys):
    import decode_speed

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    cfg = json.load(open(os.path.join(tiny_qwen3, "config.json")))
    cfg["tie_word_embeddings"] = False
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))
    out = tmp_path / "result.json"
    decode_speed.main(["--config", str(config), "--num-stages", "2", "--batch", "1", "--input-len", "16",
                       "--output-len", "12", "--runs", "1", "--alphas", "1.0", "0.6", "--systems", "tp1", "ppn",
                       "spd", "--dtype", "bfloat16", "--draft-vocab", "1024", "--max-model-len", "256",
                       "--spd-eager", "--system-timeout", "600", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    labels = [(r["system"], r.get("drafter"), r.get("alpha")) for r in rows]
    assert labels == [("tp1", None, None), ("ppn", None, None), ("spd", "oracle", 1.0), ("spd", "oracle", 1.0),
                      ("spd", "oracle", 0.6), ("spd", "oracle+pdm_priced", 0.6), ("spd", "random_pdm", None)]
    spd = [r for r in rows if r["system"] == "spd"]
    assert spd[0]["measured_alpha"] == 1.0 and "verify" not in spd[0]
    assert spd[1]["verify"] == "eager" and spd[1]["measured_alpha"] == 1.0   # verification graphs off
    assert spd[0]["verdict_lag"] == 1              # the engine's default with one stage per rank
    assert spd[2]["measured_alpha"] < 1.0
    for r in rows:
        assert r["out_tok_s"] > 0 and len(r["t_full_s"]) == 1
    for r in (spd[0], spd[3]):
        split = r["cycle_split"]
        assert len(split) == 2 and all(s["cycles"] > 0 for s in split)
        assert split[1]["ms_per_cycle"]["verify"] > 0 and split[0]["ms_per_cycle"]["verify"] == 0
    assert spd[3]["cycle_split"][1]["ms_per_cycle"]["draft"] > spd[0]["cycle_split"][1]["ms_per_cycle"]["draft"]
    out = capsys.readouterr().out
    assert "SPD n=2 lag 1 oracle alpha=1.0" in out and "SPD n=2 lag 1 oracle alpha=1.0, eager verify" in out


def test_append_keeps_rows_of_the_same_settings_only(tmp_path):
    import argparse

    import decode_speed
    import pytest

    out = tmp_path / "r.json"
    a = argparse.Namespace(num_stages=2, config="/x/qwen3_8b.json", input_len=128, output_len=512, runs=2,
                           dtype="bfloat16", out=str(out))
    assert decode_speed._earlier_rows(a) == []          # nothing there yet
    out.write_text(json.dumps(dict(decode_speed._settings(a), rows=[{"system": "tp1"}])))
    assert decode_speed._earlier_rows(a) == [{"system": "tp1"}]
    a.output_len = 256
    with pytest.raises(SystemExit, match="output_len"):
        decode_speed._earlier_rows(a)


def test_one_gpu_system_cpu(tiny_qwen3, tmp_path, capsys):
    """``spd1``: all stages in one worker, the device cycle at every alpha with one and
    with three cycles per launch, and the host cycle at the first and last, in one
    engine; drafts at alpha 1 are all accepted and the output equals the recorded greedy
    continuation."""
    import decode_speed

    out = tmp_path / "result.json"
    decode_speed.main(["--config", os.path.join(tiny_qwen3, "config.json"), "--systems", "tp1", "spd1",
                       "--one-gpu-stages", "3", "--batch", "2", "--input-len", "16", "--output-len", "12",
                       "--runs", "1", "--alphas", "1.0", "0.6", "--dtype", "bfloat16", "--max-model-len", "256",
                       "--cycles-per-step", "6", "--spd-eager", "--system-timeout", "600", "--draft-vocab", "512",
                       "--one-gpu-host-alphas", "1.0", "0.6", "--one-gpu-pdm-alphas", "0.6",
                       "--one-gpu-cycles-per-graph", "1", "3", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    labels = [(r["system"], r.get("alpha"), r.get("cycle"), r.get("drafter"), r.get("cycles_per_graph"))
              for r in rows]
    assert labels == [("tp1", None, None, None, None),
                      ("spd1", 1.0, "device", "oracle", 1), ("spd1", 1.0, "device", "oracle", 3),
                      ("spd1", 1.0, "host", "oracle", None),
                      ("spd1", 0.6, "device", "oracle", 1), ("spd1", 0.6, "device", "oracle", 3),
                      ("spd1", 0.6, "device", "oracle+pdm_priced", 3), ("spd1", 0.6, "host", "oracle", None)]
    spd = rows[1:]
    assert all(r["num_stages"] == 3 and r["num_gpus"] == 1 and r["cycles_per_step"] == 6 for r in spd)
    assert spd[0]["measured_alpha"] == spd[1]["measured_alpha"] == spd[2]["measured_alpha"] == 1.0
    # the same drafts, the same verdicts, with or without the draft module running, in either cycle
    assert spd[3]["measured_alpha"] == spd[4]["measured_alpha"] == spd[5]["measured_alpha"] \
        == spd[6]["measured_alpha"] < 1.0
    assert all(r["output_matches_plain"] for r in spd if r["cycle"] == "device")
    printed = capsys.readouterr().out
    assert "SPD n=3 1 GPU device cycle alpha=1.0 " in printed
    assert "SPD n=3 1 GPU device cycle alpha=1.0, 3 cycles/graph" in printed


def test_kernel_categories():
    import decode_speed

    cases = {
        "nvjet_sm90_tst_192x8_64x8_2x1_v_bz_TNT": "matmul",
        "void cublasLt::splitKreduce_kernel<32, 16, int, float>": "matmul",
        "void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<...>>>": "attention",
        "void flash::prepare_varlen_num_blocks_kernel<1, false>(...)": "attention",
        "std::enable_if<(((8)>(0)))&&vllm::_typeConvert<c10::BFloat16>::exists, void>::type "
        "vllm::fused_add_rms_norm_kernel<c10::BFloat16, 8>(...)": "norm",
        "void vllm::act_and_mul_kernel<c10::BFloat16, ...>": "activation",
        "void vllm::rotary_embedding_kernel<c10::BFloat16, c10::BFloat16, true>": "rotary",
        "void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16>": "kv write",
        "_plan_kernel": "spd kernels",
        "triton_poi_fused_add_mul_0": "inductor",
        "Memcpy DtoD (Device -> Device)": "copy",
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<long>>": "other",
    }
    assert {name: decode_speed.kernel_category(name) for name in cases} == cases


def test_one_gpu_rows_name_eager_stage_slices():
    """A one-worker row whose stage slices ran eagerly says so; a compiled one does not."""
    import decode_speed

    row = {"system": "spd1", "num_gpus": 1, "num_stages": 4, "cycle": "device", "alpha": 1.0, "drafter": "oracle"}
    assert decode_speed._label(row) == "SPD n=4 1 GPU device cycle alpha=1.0"
    compiled = dict(row, device_cycle_timing={"stage_compile": "inductor"})
    eager = dict(row, device_cycle_timing={"stage_compile": None})
    assert decode_speed._label(compiled) == "SPD n=4 1 GPU device cycle alpha=1.0"
    assert decode_speed._label(eager) == "SPD n=4 1 GPU device cycle alpha=1.0 (eager stages)"
    assert decode_speed._label(dict(row, cycles_per_graph=4)) == "SPD n=4 1 GPU device cycle alpha=1.0, 4 cycles/graph"
