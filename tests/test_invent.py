"""Prompts the target invents (vllm_spd.train.invent): the query prefix cut from the chat
template, cleaning and deduplication, per-request seeds, rounds, exclusions and refusal."""

import json

import pytest

from vllm_spd.train import invent

from test_train import IM_END, IM_START, _tokenizer


def test_query_prefix_chatml():
    tok = _tokenizer()
    assert invent.query_prefix(tok) == f"{IM_START}user\n"


def test_query_prefix_keeps_the_default_system_turn(smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    prefix = invent.query_prefix(tok)
    assert prefix.startswith(f"{IM_START}system\n") and "SmolLM" in prefix
    assert prefix.endswith(f"{IM_END}\n{IM_START}user\n")


def test_query_prefix_needs_a_chat_template():
    tok = _tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        invent.query_prefix(tok)


def test_clean_prompt_and_key():
    assert invent.clean_prompt("   Explain how tides work.\n") == "Explain how tides work."
    assert invent.clean_prompt("hi") is None                                  # too short
    assert invent.clean_prompt("x" * 2000) is None                            # too long
    assert invent.clean_prompt(f"What is 2+2?{IM_START}assistant", [IM_START]) is None
    assert invent.prompt_key("  Hello\n  World ") == invent.prompt_key("hello world")


class _Completion:
    def __init__(self, text, finish="stop"):
        self.text, self.finish_reason = text, finish


class _Out:
    def __init__(self, text, finish="stop"):
        self.outputs = [_Completion(text, finish)]


class StubLLM:
    """Answers by seed: seeds divisible by 5 repeat one prompt, by 7 run past
    max_tokens, 11 is an evaluation prompt, others are distinct."""

    def __init__(self):
        self.seeds, self.prompts = [], []

    def generate(self, prompts, params, use_tqdm=False):
        outs = []
        for p, sp in zip(prompts, params):
            self.prompts.append(p["prompt_token_ids"])
            self.seeds.append(sp.seed)
            if sp.seed % 5 == 0:
                outs.append(_Out("Tell me a joke about cats."))
            elif sp.seed % 7 == 0:
                outs.append(_Out("An unfinished question about", finish="length"))
            elif sp.seed == 11:
                outs.append(_Out("Name three   primary colours."))
            else:
                outs.append(_Out(f"Question number {sp.seed}: why is the sky blue?"))
        return outs


def test_invent_rounds_dedupe_and_seeds():
    tok = _tokenizer()
    llm = StubLLM()
    got = invent.invent_prompts("unused", 30, llm=llm, tokenizer=tok, seed=100,
                                exclude=["name three primary colours."])
    texts = [g["turns"][0] for g in got]
    assert len(texts) == 30 and all(g["category"] == "invented" for g in got)
    assert len({invent.prompt_key(t) for t in texts}) == 30
    assert texts.count("Tell me a joke about cats.") == 1
    assert not any("unfinished" in t for t in texts)
    assert len(llm.seeds) == len(set(llm.seeds)) and min(llm.seeds) == 100      # one seed per request
    assert all(p == tok.encode(f"{IM_START}user\n", add_special_tokens=False) for p in llm.prompts)
    again = invent.invent_prompts("unused", 30, llm=StubLLM(), tokenizer=tok, seed=100,
                                  exclude=["name three primary colours."])
    assert again == got


def test_invent_with_excluded_prompt_and_second_round():
    # seed 11 (an excluded prompt) and the repeats force a second round for 12 prompts
    llm = StubLLM()
    got = invent.invent_prompts("unused", 12, llm=llm, tokenizer=_tokenizer(), seed=0,
                                exclude=["Name three primary colours."])
    assert len(got) == 12 and 11 in llm.seeds
    assert "Name three   primary colours." not in [g["turns"][0] for g in got]


def test_invent_refuses_when_the_target_repeats_itself():
    class Parrot(StubLLM):
        def generate(self, prompts, params, use_tqdm=False):
            return [_Out("Always the same question?") for _ in prompts]

    with pytest.raises(RuntimeError, match="only 1 distinct prompts of the 5"):
        invent.invent_prompts("unused", 5, llm=Parrot(), tokenizer=_tokenizer())


def test_cli_writes_prompts_the_data_cli_reads(tmp_path, monkeypatch):
    from vllm_spd.train import data as data_mod

    evalset = tmp_path / "eval.jsonl"
    evalset.write_text(json.dumps({"turns": ["Question number 3: why is the sky blue?", "more"]}) + "\n")
    calls = {}

    def fake(target, num, **kw):
        calls.update(kw, target=target, num=num)
        return [{"turns": [f"p{i}"], "category": "invented"} for i in range(num)]

    monkeypatch.setattr(invent, "invent_prompts", fake)
    out = tmp_path / "inv.jsonl"
    invent.main(["--target", "T", "--num", "3", "--out", str(out), "--exclude", str(evalset), "--seed", "4"])
    assert calls["num"] == 3 and calls["seed"] == 4
    assert calls["exclude"] == ["Question number 3: why is the sky blue?", "more"]
    assert data_mod.read_prompts(str(out)) == [["p0"], ["p1"], ["p2"]]


def test_trainer_invents_then_answers_with_one_engine(tmp_path, monkeypatch):
    """``python -m vllm_spd.train --generate-from F --invent N``: one engine invents N
    prompts (evaluation prompts excluded), then answers the file's prompts and those."""
    import vllm

    from vllm_spd.train import data as data_mod
    from vllm_spd.train import trainer as trainer_mod

    engines = []

    class Engine(StubLLM):
        def __init__(self, model=None, **kw):
            super().__init__()
            self.chats = []
            engines.append(self)

        def chat(self, convs, params, use_tqdm=True, chat_template_kwargs=None):
            self.chats.append([c[-1]["content"] for c in convs])
            return [_Out(f"answer to {c[-1]['content'][:12]}") for c in convs]

    monkeypatch.setattr(vllm, "LLM", Engine)
    given = tmp_path / "given.jsonl"
    given.write_text(json.dumps({"turns": ["What is a stack?"]}) + "\n")
    evalset = tmp_path / "eval.jsonl"
    evalset.write_text(json.dumps({"turns": ["Question number 1: why is the sky blue?"]}) + "\n")
    out = tmp_path / "head"
    args = trainer_mod.build_parser().parse_args(
        ["--target", "T", "--num-stages", "2", "--out", str(out), "--generate-from", str(given),
         "--invent", "4", "--invent-exclude", str(evalset), "--seed", "1", "--device", "cpu"])
    trainer = trainer_mod.Trainer(args)
    trainer.tokenizer = _tokenizer()
    path = trainer.generate_data()
    assert len(engines) == 1
    invented = [r["turns"][0] for r in map(json.loads, (out / "invented.jsonl").read_text().splitlines())]
    assert len(invented) == 4 and "Question number 1: why is the sky blue?" not in invented
    assert engines[0].chats == [["What is a stack?"] + invented]
    convs = data_mod.read_conversations([path])
    assert [c[0]["content"] for c in convs] == ["What is a stack?"] + invented
    assert all(c[1]["content"].startswith("answer to ") for c in convs)
    assert trainer.generated["invented"] == 4


def test_invent_with_openers():
    """Each request starts its message with the opener its seed draws; the prompt is the
    opener plus the continuation, tagged with the opener's category; a continuation
    with nothing in it is dropped."""
    from vllm_spd.train import openers

    tok = _tokenizer()
    pool = [("math", "count n1"), ("code", "please n2"), ("writing", "then")]

    class Echo(StubLLM):
        def generate(self, prompts, params, use_tqdm=False):
            self.prompts += [p["prompt_token_ids"] for p in prompts]
            self.seeds += [sp.seed for sp in params]
            return [_Out(" " if sp.seed % 4 == 0 else f" n{sp.seed % 200} and n{sp.seed // 200}") for sp in params]

    llm = Echo()
    got = invent.invent_prompts("unused", 20, llm=llm, tokenizer=tok, seed=7, openers=pool)
    prefix = tok.encode(f"{IM_START}user\n", add_special_tokens=False)
    by_seed = dict(zip(llm.seeds, llm.prompts))
    for rec in got:
        text = rec["turns"][0]
        seed = int(text.split(" and ")[0].split(" n")[-1]) + 200 * int(text.rsplit("n", 1)[1])
        cat, op = openers.draw(pool, seed)
        assert text == f"{op} n{seed % 200} and n{seed // 200}" and rec["category"] == f"invented/{cat}"
        assert by_seed[seed] == prefix + tok.encode(op, add_special_tokens=False)
    assert len(got) == 20 and any(s % 4 == 0 for s in llm.seeds)       # some empty continuations were met
    assert all(not t["turns"][0].endswith(tuple(op for _, op in pool)) for t in got)
    assert len({rec["category"] for rec in got}) == 3
    assert invent.invent_prompts("unused", 20, llm=Echo(), tokenizer=tok, seed=7, openers=pool) == got


def test_openers_builtin_and_file(tmp_path):
    from vllm_spd.train import openers

    pool = openers.builtin()
    assert {c for c, _ in pool} == set(openers.BUILTIN) and len(pool) > 100
    assert all(op == op.rstrip(" ") and op for _, op in pool)
    assert len({op for _, op in pool}) == len(pool)
    draws = [openers.draw(pool, s)[0] for s in range(2000)]
    assert set(draws) == set(openers.BUILTIN)            # every category is drawn
    assert openers.resolve("none") is None and openers.resolve(None) is None
    assert openers.resolve("builtin") == pool
    f = tmp_path / "openers.txt"
    f.write_text("# mine\n\ncode\tComplete this:\\n\\ndef \nWrite a haiku about\n")
    assert openers.resolve(str(f)) == [("code", "Complete this:\n\ndef"), ("file", "Write a haiku about")]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no openers"):
        openers.read_openers(str(empty))
