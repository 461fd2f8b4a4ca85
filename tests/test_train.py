"""The head trainer: mask vs a simulated pipeline, loss, vocabulary, data, the draft
module's computation, and a tiny end-to-end run (with resume) on CPU."""

import itertools
import json
import math
import os
import random

import pytest
import torch

from vllm_spd import checkpoint
from vllm_spd.core.layout import StageLayout
from vllm_spd.train import data as data_mod
from vllm_spd.train import mask as mask_mod
from vllm_spd.train import vocab as vocab_mod
from vllm_spd.train.loss import distill_loss, valid_positions
from vllm_spd.train.model import DraftModule

IM_END, IM_START, EOT = "<|im_end|>", "<|im_start|>", "<|endoftext|>"
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
WORDS = ["user", "assistant", "system", "count", "from", "please", "ok", "and", "then", "stop"] + \
    [f"n{i}" for i in range(240)]


# ---- fixtures: a tiny tokenizer and a tiny random Qwen3 target -----------------------

def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([EOT, IM_START, IM_END, "[UNK]"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=IM_END, pad_token=EOT,
                                  unk_token="[UNK]", chat_template=CHATML)
    tok.add_special_tokens({"additional_special_tokens": [IM_START]})
    return tok


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out = tmp_path_factory.mktemp("tiny_target")
    tok = _tokenizer()
    im_end, eot = tok.convert_tokens_to_ids([IM_END, EOT])
    cfg = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      tie_word_embeddings=False, initializer_range=0.1, bos_token_id=eot,
                      eos_token_id=im_end, pad_token_id=eot, architectures=["Qwen3ForCausalLM"])
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).float().eval()
    model.generation_config = GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def target(target_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()


# ---- mask -------------------------------------------------------------------------------

LAYOUTS = [  # (layers, stages, anchors): 1:1 maps, shared types, unreachable types, n=1
    (4, 1, None), (8, 2, None), (8, 2, [0, 2, 3]), (8, 3, [0, 3, 5, 6, 8]), (8, 4, None),
    (8, 4, [0, 2, 4, 5]), (12, 6, [0, 2, 6, 11]), (16, 5, None),
]


@pytest.mark.parametrize("layers,stages,anchors", LAYOUTS)
def test_mask_matches_simulated_pipeline(layers, stages, anchors):
    lay = StageLayout.build(layers, stages, anchors)
    for fill in range(1, stages + 1):
        for S in (1, 2 * stages + 3):
            fast = mask_mod.structural_mask(lay, S, fill)
            for path in ("prompt", "reject"):
                slow = mask_mod.simulated_mask(lay, S, fill, path=path)
                assert torch.equal(fast, slow), (lay, fill, S, path)


def test_mask_matches_simulation_for_every_representative_depth():
    # Several depths per type: each choice of the depth a type's rows stand for.
    lay = StageLayout.build(12, 6, [0, 2, 6, 11])      # depth->type 0,1,1,2,2,2,3
    choices = {}
    for d, a in enumerate(lay.depth_to_type):
        choices.setdefault(a, []).append(d)
    choices[0] = [0]
    types = sorted(choices)
    for combo in itertools.product(*(choices[a] for a in types)):
        rep = dict(zip(types, combo))
        for fill in (1, 3, 6):
            fast = mask_mod.structural_mask(lay, 9, fill, rep_depths=rep)
            assert torch.equal(fast, mask_mod.simulated_mask(lay, 9, fill, rep_depths=rep)), (rep, fill)


def _sees(m, S, blocks, a_q, t):
    row = m[blocks.index(a_q) * S + t].view(len(blocks), S)
    return sorted((blocks[b], T) for b, T in row.nonzero().tolist())


def test_mask_semantics_by_hand():
    lay = StageLayout.build(8, 4, None)                # 1:1: depth d -> type d, deepest type 4
    blocks, S, t = mask_mod.used_types(lay), 8, 6
    full = mask_mod.structural_mask(lay, S, 4)
    # Saturated window: staircase t..t-3 at depths 0..3, everything older at depth 4.
    assert _sees(full, S, blocks, 0, t) == [(0, 6), (1, 5), (2, 4), (3, 3), (4, 0), (4, 1), (4, 2)]
    # Two tokens in flight: t at 0, t-1 at 1, the rest complete.
    part = mask_mod.structural_mask(lay, S, 2)
    assert _sees(part, S, blocks, 0, t) == [(0, 6), (1, 5)] + [(4, T) for T in range(5)]
    # The depth-1 row (token t-1 when t+1... is drafted) in a 2-token window: its older
    # neighbours are outside the window, so at full depth (bug B5 would give (2, t-1)).
    assert _sees(part, S, blocks, 1, t) == [(1, 6)] + [(4, T) for T in range(6)]
    # Full-depth rows see only full-depth rows (the deepest-prefix cache).
    assert _sees(part, S, blocks, 4, t) == [(4, T) for T in range(7)]


def test_attention_bias_padding():
    lay = StageLayout.build(8, 2, None)
    blocks, S, m = mask_mod.used_types(lay), 7, 3
    struct = mask_mod.structural_mask(lay, S, 2)
    right = torch.tensor([[1] * 5 + [0] * 2, [1] * 7], dtype=torch.bool)
    bias = mask_mod.attention_bias(struct, right, m)
    allowed = bias[:, 0] == 0
    assert bias.shape == (2, 1, m * S, m * S)
    assert torch.equal(allowed[1], struct)
    idx = lambda b, t: b * S + t  # noqa: E731
    for b in range(m):
        for t in range(S):
            r = idx(b, t)
            if t < 5:   # a valid row: as the structural mask, minus padded keys
                want = struct[r].clone().view(m, S)
                want[:, 5:] = False
                assert torch.equal(allowed[0, r], want.view(-1))
            else:       # a padded row sees only itself
                assert allowed[0, r].nonzero().view(-1).tolist() == [r]
    # Left padding: same mask as the unpadded sequence, shifted; positions start at 0.
    left = torch.tensor([[0, 0] + [1] * 5], dtype=torch.bool)
    assert mask_mod.position_ids(left).tolist() == [[0, 0, 0, 1, 2, 3, 4]]
    a_left = mask_mod.attention_bias(struct, left, m)[0, 0] == 0
    short = mask_mod.structural_mask(lay, 5, 2)
    sel = torch.tensor([b * S + t for b in range(m) for t in range(2, S)])
    assert torch.equal(a_left[sel][:, sel], short)


@pytest.mark.parametrize("layers,stages,anchors", [(8, 2, None), (8, 4, None), (8, 3, [0, 3, 5, 6, 8])])
def test_block_mask_equals_attention_bias(layers, stages, anchors):
    """FlexAttention's mask (evaluated densely) is exactly the dense bias's visibility,
    for every fill, with right padding, and with sampled representative depths."""
    from torch.nn.attention.flex_attention import create_mask

    from vllm_spd.train import attention as attn_mod

    lay = StageLayout.build(layers, stages, anchors)
    blocks, S = mask_mod.used_types(lay), 9
    valid = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 2 + [0] * 7], dtype=torch.bool)
    rng = random.Random(3)
    for fill in range(1, stages + 1):
        for rep in (None, mask_mod.representative_depths(lay, rng)):
            struct = mask_mod.structural_mask(lay, S, fill, blocks, rep)
            want = mask_mod.attention_bias(struct, valid, len(blocks))[:, 0] == 0
            required = mask_mod.required_types(lay, S, fill, blocks, rep)
            R = len(blocks) * S
            got = create_mask(attn_mod.mask_mod(required, blocks, valid), valid.shape[0], 1, R, R, device="cpu")
            assert torch.equal(got[:, 0], want), (fill, rep)


def test_flex_attention_forward_equals_sdpa(target):
    """The draft module's training forward gives the same logits with the block mask
    (FlexAttention) as with the dense additive bias (SDPA), padding included."""
    from vllm_spd.train import attention as attn_mod

    lay = StageLayout.build(4, 2, None)
    mod, _ = _draft(target, lay, layers=2)
    blocks = mask_mod.used_types(lay)
    S, H = attn_mod.padded_length(50), target.config.hidden_size
    torch.manual_seed(4)
    feats = [torch.randn(2, S, H) for _ in lay.anchors]
    valid = torch.zeros(2, S, dtype=torch.bool)
    valid[0, :50] = True
    valid[1, :31] = True
    pos = mask_mod.position_ids(valid)
    for fill in (1, 2):
        struct = mask_mod.structural_mask(lay, S, fill, blocks)
        bias = mask_mod.attention_bias(struct, valid, len(blocks))
        bm = attn_mod.block_mask(mask_mod.required_types(lay, S, fill, blocks), blocks, valid)
        with torch.no_grad():
            dense = mod(feats, pos, bias, blocks)
            flex = mod(feats, pos, bm, blocks)
        torch.testing.assert_close(flex[valid], dense[valid], atol=2e-5, rtol=1e-4)
    assert attn_mod.padded_length(1) == attn_mod.padded_length(128) == 128
    assert attn_mod.resolve("auto", torch.device("cpu")) == "sdpa"
    with pytest.raises(ValueError, match="auto, flex or sdpa"):
        attn_mod.resolve("dense", torch.device("cpu"))
    with pytest.raises(ValueError, match="CUDA only"):
        attn_mod.resolve("flex", torch.device("cpu"))


def test_representative_depths_and_fill_checks():
    lay = StageLayout.build(32, 8, [0, 8, 16, 24, 31])   # 0,0,1,1,2,2,3,3,4
    assert mask_mod.representative_depths(lay) == {0: 0, 1: 2, 2: 4, 3: 6, 4: 8}
    rng = random.Random(0)
    seen = set()
    for _ in range(50):
        rep = mask_mod.representative_depths(lay, rng)
        assert rep[0] == 0 and all(lay.depth_to_type[d] == a for a, d in rep.items())
        seen.add(rep[1])
    assert seen == {2, 3}
    with pytest.raises(ValueError):
        mask_mod.structural_mask(lay, 4, 0)
    with pytest.raises(ValueError):
        mask_mod.structural_mask(lay, 4, 9)


# ---- loss -------------------------------------------------------------------------------

def test_loss_by_hand():
    # V=5, draft ids [1, 3]; S=4, the token at 3 is padding/not trained.
    draft = torch.tensor([1, 3])
    t2d = vocab_mod.token_to_draft_index(draft, 5)
    assert t2d.tolist() == [-1, 0, -1, 1, -1]
    full = torch.full((1, 4, 5), -10.0)
    full[0, 0, [1, 3]] = torch.tensor([0.0, math.log(3)])   # p = (1/4, 3/4), argmax 3 (in draft)
    full[0, 1, [1, 3, 4]] = torch.tensor([1.0, 1.0, 5.0])     # argmax 4: not a draft token
    full[0, 2, [1, 3]] = torch.tensor([2.0, 0.0])             # valid only if token 3 is trained
    teacher_argmax = full.argmax(-1)
    teacher = full[..., draft]
    student = torch.zeros(1, 4, 2, requires_grad=True)        # q = (1/2, 1/2)
    with torch.no_grad():
        student[0, 2] = torch.tensor([0.0, 1.0])
    loss_mask = torch.tensor([[0, 1, 1, 0]])
    assert valid_positions(loss_mask, teacher_argmax, t2d).tolist() == [[True, False, False, False]]
    out = distill_loss(student, teacher, teacher_argmax, loss_mask, t2d)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert out.num_valid == 1 and abs(float(out.loss.detach()) - kl) < 1e-6
    assert out.num_correct == 0 and out.accuracy == 0.0      # student tie -> index 0, teacher 1
    out.loss.backward()
    assert student.grad[0, 1:].abs().sum() == 0
    # Position 2 becomes valid once token 3 is trained: p = softmax(2, 0), q = softmax(0, 1).
    out2 = distill_loss(student, teacher, teacher_argmax, torch.tensor([[0, 1, 1, 1]]), t2d)
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    q = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    kl2 = float((p * (p / q).log()).sum())
    assert out2.num_valid == 2 and abs(float(out2.loss.detach()) - (kl + kl2) / 2) < 1e-6
    assert out2.num_correct == 0
    # Temperature: KL of the softened distributions times T^2.
    out3 = distill_loss(student, teacher, teacher_argmax, loss_mask, t2d, temperature=2.0)
    pt = torch.softmax(torch.tensor([0.0, math.log(3)]) / 2, 0)
    assert abs(float(out3.loss.detach()) - 4 * float((pt * (pt / 0.5).log()).sum())) < 1e-6
    # No valid position: zero loss that still backpropagates.
    none = distill_loss(student, teacher, teacher_argmax, torch.zeros(1, 4, dtype=torch.long), t2d)
    assert none.num_valid == 0 and float(none.loss.detach()) == 0.0 and math.isnan(none.accuracy)


def test_loss_accuracy_counts_agreement():
    t2d = vocab_mod.token_to_draft_index(torch.tensor([0, 2, 4]), 6)
    teacher_full = torch.tensor([[[0., 0, 9, 0, 0, 0], [0., 0, 0, 0, 9, 0], [9., 0, 0, 0, 0, 0]]])
    student = torch.tensor([[[0., 5, 0], [5., 0, 0], [0., 0, 0]]])
    out = distill_loss(student, teacher_full[..., [0, 2, 4]], teacher_full.argmax(-1),
                       torch.ones(1, 3, dtype=torch.long), t2d)
    assert out.num_valid == 2 and out.num_correct == 1 and out.accuracy == 0.5


# ---- vocabulary ---------------------------------------------------------------------------

def test_draft_vocab_selection():
    counts = vocab_mod.count_tokens([[5, 5, 1, 2, 9], [2, 7, 7]], 10, masks=[[1, 1, 1, 0, 1], [1, 1, 1]])
    assert counts.tolist() == [0, 1, 1, 0, 0, 2, 0, 2, 0, 1]
    # K=3: 5 and 7 (2 each), then the lowest id among the count-1 tokens (1).
    assert vocab_mod.select_draft_vocab(counts, 3).tolist() == [1, 5, 7]
    # The end-of-turn token is always kept, the rest by frequency.
    assert vocab_mod.select_draft_vocab(counts, 3, always=[8]).tolist() == [5, 7, 8]
    # More slots than seen tokens: unseen ones by lower id.
    assert vocab_mod.select_draft_vocab(counts, 7).tolist() == [0, 1, 2, 3, 5, 7, 9]
    assert vocab_mod.select_draft_vocab(counts, 10).tolist() == list(range(10))
    assert vocab_mod.select_draft_vocab(counts, 0).tolist() == list(range(10))
    with pytest.raises(ValueError):
        vocab_mod.select_draft_vocab(counts, 1, always=[3, 4])
    ids = vocab_mod.select_draft_vocab(counts, 3)
    table = vocab_mod.token_to_draft_index(ids, 10)
    assert table.tolist() == [-1, 0, -1, -1, -1, 1, -1, 2, -1, -1]
    assert vocab_mod.to_draft(torch.tensor([[7, 0]]), table).tolist() == [[2, -1]]
    assert vocab_mod.in_draft_vocab(ids, 10).sum() == 3
    assert abs(vocab_mod.coverage(counts, ids) - 5 / 7) < 1e-9


def test_end_of_turn_ids(tok):
    im_end, eot = tok.convert_tokens_to_ids([IM_END, EOT])
    assert vocab_mod.end_of_turn_ids(tok) == [im_end]
    assert vocab_mod.end_of_turn_ids(tok, [eot]) == sorted([im_end, eot])


# ---- data -------------------------------------------------------------------------------

def _ex(prompt, answer=0):
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"a{answer}"}]
    return data_mod.Example([1, 2, answer], [0, 1, 1], data_mod.conversation_key(msgs))


def test_held_out_split_goes_by_prompt():
    prompts = [f"Question number {i}?" for i in range(2000)]
    # three answers per prompt, as with one greedy and two sampled passes
    examples = [_ex(p, k) for k in range(3) for p in prompts]
    train, held = data_mod.split_held_out(examples, 0.1)
    assert len(train) + len(held) == len(examples)
    held_keys = {e.key for e in held}
    assert not held_keys & {e.key for e in train}, "a prompt on both sides"
    assert len(held) == 3 * len(held_keys)
    assert 0.08 < len(held_keys) / len(prompts) < 0.12
    # whitespace and case do not move a prompt; more data does not move the old prompts
    assert data_mod.conversation_key([{"role": "user", "content": "  QUESTION number 7? "}]) == examples[7].key
    more = examples[: len(prompts)] + [_ex(f"another prompt {i}") for i in range(500)]
    _, held_more = data_mod.split_held_out(more, 0.1)
    assert {e.key for e in held_more} & {e.key for e in examples} == held_keys
    # nothing held out at 0; at least one prompt on each side otherwise
    assert data_mod.split_held_out(examples, 0.0) == (examples, [])
    two = [_ex("x"), _ex("y")]
    for frac in (1e-9, 0.5, 1.0):
        train, held = data_mod.split_held_out(two, frac)
        assert len(train) == 1 and len(held) == 1
    assert data_mod.split_held_out([_ex("x")], 0.5) == ([_ex("x")], [])


def test_record_formats(tmp_path):
    recs = [
        {"messages": [{"role": "system", "content": "ok"}, {"role": "user", "content": "count"},
                      {"role": "assistant", "content": "n1 n2"}]},
        {"conversations": [{"from": "human", "value": "count"}, {"from": "gpt", "value": "n3"}]},
        {"turns": ["count", "n4 n5", "then", "n6"]},
        {"prompt": "count", "response": "n7", "system": "ok"},
        {"prompt": "no answer"},   # no assistant turn: skipped for training
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    convs = data_mod.read_conversations([str(path)])
    assert len(convs) == 4
    assert convs[1] == [{"role": "user", "content": "count"}, {"role": "assistant", "content": "n3"}]
    assert [m["role"] for m in convs[2]] == ["user", "assistant", "user", "assistant"]
    assert convs[3][0] == {"role": "system", "content": "ok"}
    prompts = data_mod.read_prompts(str(path))
    # In a prompts file, "turns" are the user turns (MT-Bench style).
    assert prompts[2] == ["count", "n4 n5", "then", "n6"] and prompts[4] == ["no answer"]
    assert prompts[0] == [{"role": "system", "content": "ok"}, "count"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    with pytest.raises(data_mod.DataError, match="record 0"):
        data_mod.read_conversations([str(bad)])


def test_parquet_needs_pyarrow(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(data_mod.DataError, match="pyarrow"):
            data_mod.read_records(str(tmp_path / "x.parquet"))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{"prompt": "count", "response": "n1"}]), tmp_path / "x.parquet")
        assert data_mod.read_conversations([str(tmp_path / "x.parquet")])[0][1]["content"] == "n1"


class _SlowTokenizer:
    """The fast tokenizer without offsets: exercises the piecewise path."""

    is_fast = False

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)


@pytest.mark.parametrize("failures,error,starts", [
    (1, RuntimeError("Engine core initialization failed. See root cause above."), 2),   # retried, then up
    (5, RuntimeError("Engine core initialization failed. See root cause above."), 3),   # gives up after 3
    (1, ValueError("bad --dtype"), 1),                                                   # not a start-up race
])
def test_start_engine_starts_a_failed_engine_again(monkeypatch, failures, error, starts):
    import vllm

    from vllm_spd.train import data as data_mod

    calls = []

    class Engine:
        def __init__(self, model=None, seed=None, **kw):
            calls.append((model, seed, kw))
            if len(calls) <= failures:
                raise error

    monkeypatch.setattr(vllm, "LLM", Engine)
    monkeypatch.setattr(data_mod, "ENGINE_RETRY_WAIT_S", 0.0)
    if starts > failures:
        assert isinstance(data_mod.start_engine("T", 7, dtype="float32"), Engine)
    else:
        with pytest.raises(type(error), match=str(error)[:20]):
            data_mod.start_engine("T", 7, dtype="float32")
    assert calls == [("T", 7, {"dtype": "float32"})] * starts


def test_assistant_mask(tok):
    msgs = [{"role": "user", "content": "count n1"}, {"role": "assistant", "content": "n1 n2 n3"},
            {"role": "user", "content": "n1 n2 n3"}, {"role": "assistant", "content": " ok stop "}]
    eot = vocab_mod.end_of_turn_ids(tok)
    ex = data_mod.tokenize_conversation(tok, msgs, eot)
    words = tok.convert_ids_to_tokens(ex.input_ids)
    trained = [w for w, m in zip(words, ex.loss_mask) if m]
    # Content of both answers plus the end-of-turn after each; the user's repeat is not.
    assert trained == ["n1", "n2", "n3", IM_END, "ok", "stop", IM_END]
    assert ex.input_ids == tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    slow = data_mod.tokenize_conversation(_SlowTokenizer(tok), msgs, eot)
    assert slow == ex
    cut = data_mod.tokenize_conversation(tok, msgs, eot, max_length=7)
    assert cut.input_ids == ex.input_ids[:7] and cut.loss_mask == ex.loss_mask[:7]
    ids, valid, lmask = data_mod.collate([ex, cut], pad_id=0)
    assert ids.shape == (2, len(ex.input_ids)) and valid[1].sum() == 7 and lmask[1, 7:].sum() == 0


def test_generate_conversations_multi_turn():
    class Out:
        def __init__(self, text):
            self.outputs = [type("C", (), {"text": text})()]

    class StubLLM:
        def __init__(self):
            self.calls = []

        def chat(self, convs, params, use_tqdm=True, chat_template_kwargs=None):
            self.calls.append([list(c) for c in convs])
            return [Out(f"answer{len(c)}") for c in convs]

    llm = StubLLM()
    prompts = [["q1", "q2"], [{"role": "system", "content": "s"}, "p1"], ["r1"]]
    convs = data_mod.generate_conversations("unused", prompts, llm=llm, sampling_params=object())
    assert convs[0] == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "answer1"},
                        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "answer3"}]
    assert convs[1] == [{"role": "system", "content": "s"}, {"role": "user", "content": "p1"},
                        {"role": "assistant", "content": "answer2"}]
    assert [len(c) for c in llm.calls] == [3, 1]
    assert len(data_mod.generate_conversations("unused", prompts, num=1, llm=StubLLM(),
                                               sampling_params=object())) == 1


# ---- the draft module ---------------------------------------------------------------------

def _rms(x, w, eps):
    return w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, pos, theta):
    """Rotate-half RoPE written out: x [S, heads, d], pos [S]."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double()[:, None] * inv[None]                    # [S, d/2]
    cos, sin = ang.cos()[:, None, :].float(), ang.sin()[:, None, :].float()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def _manual_layer(sd, cfg, x, pos):
    """One Qwen3 decoder layer from its weights, causal over the rows of x [S, H]."""
    eps, nh, nkv, hd = cfg.rms_norm_eps, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    theta = cfg.rope_parameters["rope_theta"]
    S = x.shape[0]
    h = _rms(x, sd["input_layernorm.weight"], eps)
    q = (h @ sd["self_attn.q_proj.weight"].T).view(S, nh, hd)
    k = (h @ sd["self_attn.k_proj.weight"].T).view(S, nkv, hd)
    v = (h @ sd["self_attn.v_proj.weight"].T).view(S, nkv, hd)
    q = _rope(_rms(q, sd["self_attn.q_norm.weight"], eps), pos, theta)
    k = _rope(_rms(k, sd["self_attn.k_norm.weight"], eps), pos, theta)
    heads = []
    for i in range(nh):
        j = i // (nh // nkv)
        scores = q[:, i] @ k[:, j].T / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v[:, j])
    x = x + torch.cat(heads, -1) @ sd["self_attn.o_proj.weight"].T
    h = _rms(x, sd["post_attention_layernorm.weight"], eps)
    gate, up = h @ sd["mlp.gate_proj.weight"].T, h @ sd["mlp.up_proj.weight"].T
    return x + (torch.nn.functional.silu(gate) * up) @ sd["mlp.down_proj.weight"].T


def _draft(target, lay, layers=2, K=40, seed=0):
    torch.manual_seed(seed)
    ids = torch.arange(3, 3 + K)
    mod = DraftModule.from_target(target, lay, layers, ids)
    with torch.no_grad():   # an untrained-looking but non-trivial module
        for p in mod.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return mod.eval(), ids


def test_module_is_a_head(target, target_dir, tmp_path):
    from vllm_spd.head import init_head

    lay = StageLayout.build(4, 2, None)
    mod, ids = _draft(target, lay)
    tensors = mod.head_tensors(ids)
    init_head(target_dir, 2, str(tmp_path / "ref"), num_draft_layers=2, draft_token_ids=ids.tolist())
    ref = checkpoint.load_tensors(str(tmp_path / "ref"))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    cfg = checkpoint.read_config(str(tmp_path / "ref"))
    checkpoint.check_tensors(cfg, tensors, "module")
    # lm_head starts as the target's LM-head rows of the draft tokens.
    torch.manual_seed(0)
    fresh = DraftModule.from_target(target, lay, 1, ids)
    assert torch.equal(fresh.lm_head.weight, target.lm_head.weight[ids])
    assert not any(k.startswith(("rotary", "_final")) for k in fresh.state_dict())
    # The target's final norm is used, not owned: not a parameter of the head.
    assert all(p is not target.model.norm.weight for p in fresh.parameters())
    assert fresh.final_norm is target.model.norm


def test_deepest_rows_match_direct_computation(target):
    """Rows all at full depth with a causal mask, at absolute positions 5.., against the
    layer computed by hand from the same weights (RoPE written out)."""
    lay = StageLayout.build(4, 2, None)
    mod, _ = _draft(target, lay, layers=2)
    cfg = target.config
    S, H, top = 9, cfg.hidden_size, lay.num_types - 1
    torch.manual_seed(1)
    anchors = [torch.randn(1, S, H) for _ in lay.anchors]
    pos = torch.arange(5, 5 + S)[None]
    with torch.no_grad():
        rows = mod.aggregate(anchors, top)
        causal = torch.zeros(1, 1, S, S).masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1),
                                                      torch.finfo(torch.float32).min)
        got = mod.logits(mod.run_layers(rows, pos, causal))[0]
        x = torch.cat(anchors, -1)[0] @ mod.aggr_projs[top].weight.T
        for layer in mod.layers:
            x = _manual_layer(layer.state_dict(), cfg, x, pos[0])
        want = _rms(x, target.model.norm.weight, cfg.rms_norm_eps) @ mod.lm_head.weight.T
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    # RoPE is relative: a uniform shift changes nothing, a gap does (and still matches).
    gap = pos + (torch.arange(S) >= 4).long() * 7
    with torch.no_grad():
        shifted = mod.logits(mod.run_layers(rows, pos + 3, causal))[0]
        gapped = mod.logits(mod.run_layers(rows, gap, causal))[0]
        x = torch.cat(anchors, -1)[0] @ mod.aggr_projs[top].weight.T
        for layer in mod.layers:
            x = _manual_layer(layer.state_dict(), cfg, x, gap[0])
        want_gap = _rms(x, target.model.norm.weight, cfg.rms_norm_eps) @ mod.lm_head.weight.T
    torch.testing.assert_close(shifted, got, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(gapped, want_gap, atol=2e-5, rtol=1e-4)
    assert (gapped[4:] - got[4:]).abs().max() > 1e-3


@pytest.mark.parametrize("stages,anchors", [(2, None), (4, None), (2, [0, 1, 4])])
def test_training_forward_equals_simulated_inference(target, stages, anchors):
    """The type-0 block of the training forward, under the mask for fill f, equals the
    draft module run the way inference runs it: the rows the runner would build (cache
    at full depth + pending + in-flight staircase), plain causal attention."""
    lay = StageLayout.build(4, stages, anchors)
    mod, _ = _draft(target, lay, layers=2)
    S, H = 7, target.config.hidden_size
    torch.manual_seed(2)
    anchor_states = [torch.randn(1, S, H) for _ in lay.anchors]
    blocks = mask_mod.used_types(lay)
    valid = torch.ones(1, S, dtype=torch.bool)
    pos = mask_mod.position_ids(valid)
    off = 3 * stages + 2
    for fill in range(1, stages + 1):
        struct = mask_mod.structural_mask(lay, S, fill)
        with torch.no_grad():
            train_logits = mod(anchor_states, pos, mask_mod.attention_bias(struct, valid, len(blocks)), blocks)
        for t in range(S):
            rows = [(p - off, d) for p, d in mask_mod._rows_at_draft(lay, t + off, fill, "prompt") if p >= off]
            assert [p for p, _ in rows] == list(range(t + 1))
            with torch.no_grad():
                x = torch.cat([mod.aggregate([a[:, p:p + 1] for a in anchor_states], lay.depth_to_type[d])
                               for p, d in rows], 1)
                R = x.shape[1]
                causal = torch.zeros(1, 1, R, R).masked_fill(torch.ones(R, R, dtype=torch.bool).triu(1),
                                                              torch.finfo(torch.float32).min)
                inf_logits = mod.logits(mod.run_layers(x, torch.tensor([[p for p, _ in rows]]), causal))[0, -1]
            torch.testing.assert_close(train_logits[0, t], inf_logits, atol=2e-5, rtol=1e-4)


def test_tower_init_from_target_continues_the_target(target):
    """--tower-init target: 2 draft layers copied from the target's layers 2 and 3 and the
    deepest type's aggregation the identity on anchor 2 (the output of layer 1), so the
    head's logits at step 0 are the target's own on the draft columns."""
    from vllm_spd.train.trainer import teacher_forward

    lay = StageLayout.build(4, 2, [0, 2])
    ids = torch.arange(3, 43)
    torch.manual_seed(0)
    mod = DraftModule.from_target(target, lay, 2, ids, tower_init="target").eval()
    for j, i in enumerate([2, 3]):
        for k, v in target.model.layers[i].state_dict().items():
            assert torch.equal(mod.layers[j].state_dict()[k], v), (j, k)
    S = 8
    torch.manual_seed(3)
    tokens = torch.randint(0, 300, (1, S))
    feats, t_logits, _ = teacher_forward(target, tokens, torch.ones(1, S, dtype=torch.bool), lay.anchors, ids)
    top = lay.num_types - 1
    with torch.no_grad():
        for a in range(lay.num_types):
            torch.testing.assert_close(mod.aggregate(feats, a), feats[a])
        causal = torch.zeros(1, 1, S, S).masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1),
                                                      torch.finfo(torch.float32).min)
        got = mod.logits(mod.run_layers(mod.aggregate(feats, top), torch.arange(S)[None], causal))
    torch.testing.assert_close(got, t_logits, atol=1e-4, rtol=1e-4)
    # The default tower is random: far from the target's logits.
    torch.manual_seed(0)
    rnd = DraftModule.from_target(target, lay, 2, ids).eval()
    with torch.no_grad():
        far = rnd.logits(rnd.run_layers(rnd.aggregate(feats, top), torch.arange(S)[None], causal))
    assert (far - t_logits).abs().max() > 1e-2
    with pytest.raises(ValueError, match="tower_init"):
        DraftModule.from_target(target, lay, 2, ids, tower_init="copy")
    with pytest.raises(ValueError, match="5 draft layers but the target has 4"):
        DraftModule.from_target(target, lay, 5, ids, tower_init="target")
    with pytest.raises(ValueError, match="does not match target layer"):
        DraftModule.from_target(target, lay, 1, ids, {"intermediate_size": 96}, tower_init="target")


def test_teacher_anchor_L_is_pre_norm(target):
    from vllm_spd.train.trainer import teacher_forward

    ids = torch.randint(0, 200, (2, 6))
    valid = torch.ones(2, 6, dtype=torch.bool)
    caught = {}
    hooks = [target.model.layers[k].register_forward_hook(lambda m, a, o, k=k: caught.__setitem__(k, o))
             for k in range(4)]
    try:
        feats, t_logits, t_argmax = teacher_forward(target, ids, valid, [0, 2, 4], torch.tensor([3, 5]))
    finally:
        for h in hooks:
            h.remove()
    out = caught[3][0] if isinstance(caught[3], tuple) else caught[3]
    torch.testing.assert_close(feats[2], out)                          # raw last layer output
    torch.testing.assert_close(feats[1], caught[1] if not isinstance(caught[1], tuple) else caught[1][0])
    torch.testing.assert_close(feats[0], target.model.embed_tokens(ids))
    full = target(ids).logits
    torch.testing.assert_close(t_logits, full[..., [3, 5]])
    assert torch.equal(t_argmax, full.argmax(-1))


# ---- end to end ---------------------------------------------------------------------------

def _write_data(path, n, seed):
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        k = rng.randrange(200)
        count = " ".join(f"n{k + j}" for j in range(rng.randrange(6, 14)))
        if i % 3 == 0:
            rec = {"prompt": f"count from n{k}", "response": count + " stop"}
        elif i % 3 == 1:
            rec = {"messages": [{"role": "user", "content": f"please count from n{k}"},
                                {"role": "assistant", "content": count}]}
        else:
            rec = {"turns": [f"count from n{k}", count, "and then", "ok " + count]}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _train(argv):
    from vllm_spd.train.trainer import main

    return main(argv + ["--no-progress"])


def test_end_to_end_train_and_resume(target_dir, tmp_path):
    data = _write_data(tmp_path / "train.jsonl", 60, seed=0)
    common = ["--target", target_dir, "--num-stages", "2", "--draft-layers", "1", "--draft-vocab-size", "64",
              "--data", data, "--steps", "16", "--lr", "3e-3", "--batch-size", "4", "--max-length", "64",
              "--eval-every", "8", "--eval-fraction", "0.2", "--seed", "3", "--log-every", "4"]
    out_a = tmp_path / "a"
    summary = _train(common + ["--out", str(out_a)])
    assert summary["finished"] and summary["step"] == 16

    cfg = checkpoint.read_config(str(out_a))
    tensors = checkpoint.load_tensors(str(out_a))
    checkpoint.check_tensors(cfg, tensors, str(out_a))
    assert cfg.trained and cfg.num_stages == 2 and cfg.anchors == [0, 2, 3] and cfg.draft_vocab_size == 64
    prov = cfg.provenance
    assert prov["steps"] == 16 and prov["finished"] and prov["data_files"] == [os.path.abspath(data)]
    assert prov["final_eval_accuracy"] is not None and prov["train_time_s"] >= 0
    ids = tensors["draft_token_ids"]
    im_end = _tokenizer().convert_tokens_to_ids(IM_END)
    assert im_end in ids.tolist() and bool((ids[1:] > ids[:-1]).all())

    history = [json.loads(x) for x in (out_a / "train_log.jsonl").read_text().splitlines()]
    evals = [h for h in history if "eval_loss" in h]
    assert [e["step"] for e in evals] == [0, 8, 16]
    assert evals[-1]["eval_loss"] < 0.8 * evals[0]["eval_loss"], evals
    train_losses = [h["loss"] for h in history if "loss" in h]
    assert train_losses[-1] < train_losses[0]

    # Interrupted after 6 steps, then resumed: same weights as the uninterrupted run.
    out_b = tmp_path / "b"
    first = _train(common + ["--out", str(out_b), "--stop-after", "6"])
    assert first["step"] == 6 and not first["finished"]
    assert not checkpoint.read_config(str(out_b)).provenance["finished"]
    second = _train(common + ["--out", str(out_b), "--resume"])
    assert second["step"] == 16 and second["finished"]
    resumed = checkpoint.load_tensors(str(out_b))
    assert resumed.keys() == tensors.keys()
    for k in tensors:
        torch.testing.assert_close(resumed[k], tensors[k], atol=1e-6, rtol=1e-5)

    with pytest.raises(SystemExit, match="different settings"):
        _train(common[:5] + ["2"] + common[6:] + ["--out", str(out_b), "--resume"])

    # --init: a new run starts from out_a's weights and draft vocabulary.
    out_c = tmp_path / "c"
    init_args = common[:11] + ["4"] + common[12:] + ["--out", str(out_c)]
    third = _train(init_args + ["--init", str(out_a), "--draft-vocab-size", "32", "--stop-after", "2"])
    assert third["step"] == 2 and third["draft_vocab_size"] == 64
    third = _train(init_args + ["--draft-vocab-size", "32", "--resume"])  # an --init run resumes
    assert third["step"] == 4 and third["finished"]
    history_c = [json.loads(x) for x in (out_c / "train_log.jsonl").read_text().splitlines()]
    start = next(h for h in history_c if "eval_loss" in h)
    assert start["step"] == 0
    assert start["eval_loss"] == pytest.approx(evals[-1]["eval_loss"], rel=1e-5)
    assert torch.equal(checkpoint.load_tensors(str(out_c))["draft_token_ids"], ids)
    assert checkpoint.read_config(str(out_c)).provenance["init"]["head"] == os.path.abspath(out_a)
    # --init from out_a packed to int8: the same start, up to int8 rounding.
    from vllm_spd.head import pack_head

    pack_head(str(out_a), str(tmp_path / "a_int8"), int8=True)
    _train(init_args[:-1] + [str(tmp_path / "c8"), "--init", str(tmp_path / "a_int8"), "--stop-after", "1"])
    start8 = next(h for h in map(json.loads, (tmp_path / "c8" / "train_log.jsonl").read_text().splitlines())
                  if "eval_loss" in h)
    assert start8["step"] == 0 and start8["eval_loss"] != start["eval_loss"]
    assert start8["eval_loss"] == pytest.approx(start["eval_loss"], rel=1e-2)
    with pytest.raises(SystemExit, match="draft layers: head 1, --draft-layers 2"):
        _train(common[:5] + ["2"] + common[6:] + ["--out", str(tmp_path / "d"), "--init", str(out_a)])
    with pytest.raises(SystemExit, match="exclude each other"):
        _train(common + ["--out", str(out_b), "--resume", "--init", str(out_a)])

    # --tower-init target: recorded in the head; not with --init; a tower that cannot be copied is named.
    out_e = tmp_path / "e"
    _train(init_args[:-2] + ["--out", str(out_e), "--tower-init", "target", "--steps", "2"])
    assert checkpoint.read_config(str(out_e)).provenance["tower_init"] == "target"
    assert checkpoint.read_config(str(out_a)).provenance["tower_init"] == "random"
    with pytest.raises(SystemExit, match="--init and --tower-init exclude each other"):
        _train(common + ["--out", str(tmp_path / "f"), "--init", str(out_a), "--tower-init", "target"])
    for init in ("target", "random"):   # a tower deeper than the target is refused, whatever its start
        with pytest.raises(SystemExit, match="--draft-layers 6: the draft tower needs 1 to 4 layers"):
            _train(common[:5] + ["6"] + common[6:] + ["--out", str(tmp_path / "g"), "--tower-init", init])


def _torchrun(argv, nproc=2):
    """``torchrun --standalone --nproc-per-node N -m vllm_spd.train ARGV`` on CPU (gloo)."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           "-m", "vllm_spd.train", *argv, "--no-progress", "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_torchrun_two_processes_train_the_weights_of_one(target_dir, tmp_path):
    """Two processes over gloo with the same global batch take the same steps as one
    (within float32 rounding), a batch of one conversation (27 training conversations
    in batches of 13) leaves one of them without any, and --resume continues a
    two-process run where it stopped."""
    data = _write_data(tmp_path / "train.jsonl", 30, seed=1)
    common = ["--target", target_dir, "--num-stages", "2", "--draft-layers", "1", "--draft-vocab-size", "64",
              "--data", data, "--steps", "10", "--lr", "3e-3", "--batch-size", "13", "--max-length", "64",
              "--eval-every", "5", "--eval-fraction", "0.2", "--seed", "3", "--log-every", "1"]
    one = tmp_path / "one"
    _train(common + ["--out", str(one)])
    two = tmp_path / "two"
    (summary,) = _torchrun(common + ["--out", str(two)])     # only rank 0 prints
    assert summary["finished"] and summary["step"] == 10
    w1, w2 = checkpoint.load_tensors(str(one)), checkpoint.load_tensors(str(two))
    assert w1.keys() == w2.keys()
    moved = 0
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-5, rtol=1e-4)
    # training moved the weights far more than the two runs differ
    init = tmp_path / "init"
    _train(common[:13] + ["0"] + common[14:] + ["--out", str(init), "--steps", "1", "--lr", "0"])
    w0 = checkpoint.load_tensors(str(init))
    moved = max(float((w1[k].float() - w0[k].float()).abs().max()) for k in w1 if k != "draft_token_ids")
    assert moved > 1e-2
    # The log is rank 0's: one entry per step and evaluation, with the global batch's counts.
    h1 = [json.loads(x) for x in (one / "train_log.jsonl").read_text().splitlines()]
    h2 = [json.loads(x) for x in (two / "train_log.jsonl").read_text().splitlines()]
    assert [sorted(h) for h in h1] == [sorted(h) for h in h2]
    for a, b in zip(h1, h2):
        for key in ("positions", "eval_positions", "step"):
            assert a.get(key) == b.get(key), (a, b)
        for key in ("loss", "eval_loss", "accuracy", "eval_accuracy"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
    assert not list(two.glob("*.rank*"))
    # Stopped after 4 steps and resumed, still two processes: the uninterrupted run's weights.
    part = tmp_path / "part"
    (first,) = _torchrun(common + ["--out", str(part), "--stop-after", "4"])
    assert first["step"] == 4 and not first["finished"]
    (second,) = _torchrun(common + ["--out", str(part), "--resume"])
    assert second["step"] == 10 and second["finished"]
    w3 = checkpoint.load_tensors(str(part))
    for k in w2:
        torch.testing.assert_close(w3[k], w2[k], atol=1e-6, rtol=1e-5)


def test_global_batch_must_cover_every_process(target_dir, tmp_path):
    from vllm_spd.train.distributed import Dist
    from vllm_spd.train.trainer import Trainer, build_parser

    args = build_parser().parse_args(["--target", target_dir, "--num-stages", "2", "--out", str(tmp_path / "x"),
                                      "--batch-size", "2", "--data", "none.jsonl"])
    with pytest.raises(SystemExit, match="--batch-size 2 is the global batch: .* \\(4 under torchrun\\)"):
        Trainer(args, Dist(world=4, rank=1, local_rank=1))


class FakeClock:
    """Advances one second at every reading: the trainer's time is then a count of its
    clock readings, the same on every machine."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def _trainer(argv):
    from vllm_spd.train.trainer import Trainer, build_parser

    t = Trainer(build_parser().parse_args(argv + ["--no-progress"]))
    t.setup()
    return t


def test_time_budget_plans_the_steps_and_ends_the_decay_there(target_dir, tmp_path):
    from vllm_spd.train.budget import fit_steps

    data = _write_data(tmp_path / "train.jsonl", 40, seed=0)
    out = tmp_path / "head"
    argv = ["--target", target_dir, "--num-stages", "2", "--draft-layers", "1", "--draft-vocab-size", "64",
            "--data", data, "--steps", "10000", "--lr", "3e-3", "--batch-size", "4", "--max-length", "64",
            "--warmup-steps", "2", "--eval-every", "1000", "--eval-fraction", "0.2", "--seed", "3",
            "--time-budget", "120", "--out", str(out)]
    t = _trainer(argv)
    t.clock = FakeClock()
    summary = t.train()
    plan = summary["time_budget_plan"]
    # Planned once, 10 steps into the run (warm-up is 2 steps), before the decay began.
    assert plan["at_step"] == 10 and plan["most_steps"] == 10000
    assert plan["total_steps"] == fit_steps(120, plan["spent_s"], 10, plan["step_s"], plan["eval_s"], 1000, 10000)
    assert 10 < plan["total_steps"] < 10000
    # The run ends where the plan says, with its schedule done, inside the budget.
    assert summary["finished"] and summary["step"] == summary["total_steps"] == plan["total_steps"]
    cfg = json.loads((out / "config.json").read_text())["spd"]["provenance"]
    assert cfg["finished"] and cfg["time_budget_s"] == 120 and cfg["time_budget_plan"] == plan
    assert cfg["train_time_s"] <= 120
    lrs = [h["lr"] for h in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "lr" in h]
    assert lrs[-1] == 0.0   # the linear decay reached zero at the planned end

    # Stopped after the plan and resumed, a run keeps its planned length.
    out2 = tmp_path / "head2"
    argv2 = [x if x != str(out) else str(out2) for x in argv]
    t = _trainer(argv2 + ["--stop-after", "12"])
    t.clock = FakeClock()
    first = t.train()
    assert first["step"] == 12 and not first["finished"] and first["time_budget_plan"] == plan
    t = _trainer(argv2 + ["--resume"])
    t.clock = FakeClock()
    resumed = t.train()
    assert resumed["finished"] and resumed["step"] == plan["total_steps"] and resumed["time_budget_plan"] == plan


def test_time_budget_plans_again_at_checkpoints_without_raising_the_lr(target_dir, tmp_path):
    # Evaluations every 7 steps and checkpoints every 5 cost clock readings the first plan
    # (steps alone, evaluations priced apart) does not see; each checkpoint step plans
    # again from all the loop's time, and the decay goes on from the present rate.
    data = _write_data(tmp_path / "train.jsonl", 40, seed=0)
    out = tmp_path / "head"
    t = _trainer(["--target", target_dir, "--num-stages", "2", "--draft-layers", "1", "--draft-vocab-size", "64",
                  "--data", data, "--steps", "10000", "--lr", "3e-3", "--batch-size", "4", "--max-length", "64",
                  "--warmup-steps", "2", "--eval-every", "7", "--save-every", "5", "--log-every", "1",
                  "--eval-fraction", "0.2", "--seed", "3", "--time-budget", "300", "--out", str(out)])
    t.clock = FakeClock()
    summary = t.train()
    plan = summary["time_budget_plan"]
    assert plan["plans"] >= 3 and summary["finished"] and summary["step"] == plan["total_steps"]
    assert json.loads((out / "config.json").read_text())["spd"]["provenance"]["train_time_s"] <= 300
    lrs = [h["lr"] for h in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
           if "lr" in h and h["step"] >= 2]
    assert all(b <= a for a, b in zip(lrs, lrs[1:])), lrs   # never rises after warm-up
    assert lrs[-1] == 0.0 and lrs[0] > 0.0


def test_time_budget_must_be_positive(target_dir, tmp_path):
    data = _write_data(tmp_path / "train.jsonl", 8, seed=0)
    with pytest.raises(SystemExit, match="--time-budget -5.0"):
        _trainer(["--target", target_dir, "--num-stages", "2", "--data", data, "--time-budget", "-5",
                  "--out", str(tmp_path / "h")])


def test_cli_trained_head_drafts_inside_vllm(tiny_qwen3, tmp_path, monkeypatch):
    """A head written by the training CLI is a head the plugin serves: loaded by vLLM on
    two pipeline ranks, greedy output equal to plain decoding, drafts counted."""
    import gc

    from vllm import LLM, SamplingParams

    data = _write_data(tmp_path / "train.jsonl", 40, seed=1)
    out = tmp_path / "head"
    _train(["--target", tiny_qwen3, "--num-stages", "2", "--draft-layers", "1", "--draft-vocab-size", "64",
            "--data", data, "--steps", "8", "--lr", "3e-3", "--batch-size", "4", "--max-length", "64",
            "--eval-every", "8", "--eval-fraction", "0.2", "--seed", "3", "--out", str(out)])
    prompts = [[5, 17, 42, 9], [100, 101, 102], [7] * 6]
    sp = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    results = []
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    for spec in (None, {"method": "spd", "num_stages": 2, "model": str(out), "stage_placement": "pipeline"}):
        llm = LLM(model=tiny_qwen3, dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
                  disable_log_stats=False, speculative_config=spec)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        drafts = sum(m.value for m in llm.get_metrics() if m.name == "vllm:spec_decode_num_drafts")
        results.append(([list(o.outputs[0].token_ids) for o in outs], drafts))
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    (plain, _), (spd, drafts) = results
    assert spd == plain
    assert drafts == len(prompts) * 15
