"""Train a draft head by distillation from the frozen target.

Per micro-batch: one no-grad forward of the target gives the teacher logits and the
hidden states at every anchor (anchor k < L: ``hidden_states[k]``; anchor L: the input
of the final norm, because HF's ``hidden_states[-1]`` is already normed). A pipeline
fill is drawn (probability ``--full-fill-prob`` of a full window, else uniform in
[1, n-1]), the draft module runs over the block layout with the matching structural
mask, and the KL on the draft vocabulary is minimised (AdamW, linear warmup + linear
decay, gradient clipping).

The output directory is a head directory the plugin loads (``config.json`` +
``model.safetensors``), rewritten at every checkpoint; ``trainer_state.pt`` beside it
holds what ``--resume`` needs (fp32 weights, optimizer, scheduler, step), and
``train_log.jsonl`` the loss/accuracy history.

Under ``torchrun --nproc-per-node N -m vllm_spd.train ...`` the N processes (one per GPU)
each answer their share of the generation prompts with their own vLLM engine, then train
one draft module under ``DistributedDataParallel``: ``--batch-size`` stays the global
batch, each process takes every N-th example of it, and the loss is weighted by the
global count of trained positions, so N processes take the same steps as one
(``distributed.py``). Rank 0 logs, evaluates its share with the others and saves.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time

import torch

from vllm_spd import checkpoint

from vllm_spd.core import layout as layout_mod
from vllm_spd.train import attention as attention_mod
from vllm_spd.train import budget
from vllm_spd.train import data as data_mod
from vllm_spd.train import invent as invent_mod
from vllm_spd.train import mask as mask_mod
from vllm_spd.train import openers as openers_mod
from vllm_spd.train import vocab as vocab_mod
from vllm_spd.train.distributed import Dist
from vllm_spd.train.loss import distill_loss
from vllm_spd.train.model import TOWER_INITS, DraftModule

logger = logging.getLogger("vllm_spd.train")

STATE_FILE = "trainer_state.pt"
LOG_FILE = "train_log.jsonl"
GENERATED_FILE = "generated.jsonl"
INVENTED_FILE = "invented.jsonl"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vllm_spd.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("head")
    g.add_argument("--target", required=True, help="target model directory (HF format)")
    g.add_argument("--num-stages", type=int, required=True)
    g.add_argument("--draft-layers", type=int, default=1, help="decoder layers of the draft tower (Ls)")
    g.add_argument("--anchors", type=_int_list, default=None,
                   help="comma-separated anchors starting with 0 (default: layout.default_anchors)")
    g.add_argument("--stage-layers", type=_int_list, default=None, help="layers per stage (default: vLLM's split)")
    g.add_argument("--draft-vocab-size", type=int, default=32000, help="K; 0 or >= vocab = full vocabulary")
    g.add_argument("--vocab-count", choices=["assistant", "all"], default="assistant",
                   help="tokens counted for the draft vocabulary")
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", action="extend", default=[], help="JSONL/parquet conversation files")
    g.add_argument("--generate-from", default=None, help="prompts file answered by the target (vLLM) first")
    g.add_argument("--num-generate", type=int, default=None, help="answer only the first N prompts")
    g.add_argument("--invent", type=int, default=0, metavar="N",
                   help="also answer N prompts the target invents (vllm_spd.train.invent)")
    g.add_argument("--invent-openers", default="none", metavar="builtin|none|FILE",
                   help="openers that start the invented prompts (vllm_spd.train.openers)")
    g.add_argument("--invent-exclude", nargs="*", default=[], metavar="FILE",
                   help="prompt files whose prompts must not be invented (e.g. evaluation sets)")
    g.add_argument("--gen-temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--gen-top-p", type=float, default=1.0)
    g.add_argument("--gen-max-tokens", type=int, default=1024)
    g.add_argument("--chat-template-kwargs", type=json.loads, default={},
                   help='JSON passed to the chat template, e.g. \'{"enable_thinking": false}\'')
    g.add_argument("--max-length", type=int, default=2048, help="tokens per conversation (longer are cut)")
    g.add_argument("--eval-fraction", type=float, default=0.02,
                   help="share of the prompts held out (chosen by a hash of the prompt, the same in every run)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--out", required=True, help="output head directory")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    g.add_argument("--epochs", type=float, default=1.0)
    g.add_argument("--stop-after", type=int, default=None,
                   help="leave after this step (the schedule still spans --steps); resume later")
    g.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="fit the run to this many seconds of training (steps, evaluations, checkpoints; not "
                        "data generation or loading): when warm-up ends, and again at every checkpoint, the step "
                        "count is planned from the time per step so far, --steps/--epochs being the most it may "
                        "be, and the linear decay goes on from the present rate to end there")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--warmup-steps", type=int, default=None, help="default: 5%% of the steps, at most 100")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--batch-size", type=int, default=4,
                   help="conversations per optimizer step, over all processes under torchrun")
    g.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    g.add_argument("--full-fill-prob", type=float, default=0.5,
                   help="probability of a full pipeline window per micro-batch (else fill ~ U[1, n-1])")
    g.add_argument("--sample-type-depths", action="store_true",
                   help="when several depths share a type, draw the depth its rows stand for per step")
    g.add_argument("--eval-every", type=int, default=500)
    g.add_argument("--save-every", type=int, default=None, help="default: --eval-every")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--resume", action="store_true", help=f"continue from OUT/{STATE_FILE}")
    g.add_argument("--init", default=None, metavar="HEAD_DIR",
                   help="start from this head's weights and draft vocabulary (fresh optimizer and "
                        "schedule), e.g. to go on training a head on more data")
    g.add_argument("--tower-init", choices=list(TOWER_INITS), default="random",
                   help="the draft layers' start: random, or the target's last --draft-layers layers with each "
                        "aggregation the identity on its deepest anchor (not with --init)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    g.add_argument("--attention", choices=["auto", "flex", "sdpa"], default="auto",
                   help="the draft module's training attention: block-sparse FlexAttention or SDPA with a dense "
                        "bias (same result; auto: sdpa; flex needs CUDA)")
    g.add_argument("--teacher-dtype", choices=["auto", *_DTYPES], default="auto",
                   help="dtype of the frozen target's forward (anchors and teacher logits); auto: float32, "
                        "the precision heads are evaluated in, with TF32 matmuls on CUDA")
    g.add_argument("--dtype", choices=["auto", *_DTYPES], default="auto",
                   help="the draft module's compute dtype, by autocast (auto: bfloat16 on cuda, float32 on cpu); "
                        "its master weights are fp32")
    g.add_argument("--save-dtype", choices=list(_DTYPES), default="float32", help="dtype of model.safetensors")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


# ---- batches -------------------------------------------------------------------------

def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Deterministic batches of one epoch: shuffled, then grouped by length inside
    windows of 64 batches (less padding), batch order shuffled again."""
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    window = batch_size * 64
    batches = []
    for w in range(0, len(perm), window):
        chunk = sorted(perm[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in order]


def draw_fill(num_stages: int, full_prob: float, rng: random.Random) -> int:
    if num_stages == 1 or rng.random() < full_prob:
        return num_stages
    return rng.randint(1, num_stages - 1)


# ---- the frozen target -----------------------------------------------------------------

@torch.no_grad()
def teacher_forward(target_model, input_ids: torch.Tensor, valid: torch.Tensor, anchors,
                    draft_ids: torch.Tensor):
    """Anchor states (one [B, S, H] per anchor), teacher logits on the draft columns
    [B, S, K] (float32) and the teacher's full-vocabulary argmax [B, S]."""
    L = target_model.config.num_hidden_layers
    base = target_model.get_decoder()
    pre = {}
    hook = None
    if L in anchors:  # HF's hidden_states[L] is post-norm; the anchor is the norm's input
        hook = base.norm.register_forward_pre_hook(lambda mod, args: pre.__setitem__("x", args[0]))
    try:
        out = target_model(input_ids=input_ids, attention_mask=valid.long(), output_hidden_states=True,
                           use_cache=False)
    finally:
        if hook is not None:
            hook.remove()
    hs = out.hidden_states
    feats = [pre["x"] if k == L else hs[k] for k in anchors]
    logits = out.logits
    return feats, logits[..., draft_ids].float(), logits.argmax(-1)


# ---- training ------------------------------------------------------------------------

class Trainer:
    def __init__(self, args, dist: Dist | None = None):
        self.args = args
        self.dist = dist or Dist()
        self._shard = None   # under torchrun: the generated data this process wrote (generate_data)
        if args.batch_size < self.dist.world:
            raise SystemExit(f"--batch-size {args.batch_size} is the global batch: give at least one conversation "
                             f"per process ({self.dist.world} under torchrun)")
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if args.dtype == "auto":
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = _DTYPES[args.dtype]
        self.teacher_dtype = torch.float32 if args.teacher_dtype == "auto" else _DTYPES[args.teacher_dtype]
        if self.teacher_dtype == torch.float32 and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.attention = attention_mod.resolve(args.attention, self.device)
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.state_path = os.path.join(self.out, STATE_FILE)
        self.resume_state = None
        self.init_info = None
        self.tower_init = args.tower_init
        if args.init and args.tower_init != "random":
            raise SystemExit("--init and --tower-init exclude each other: --init starts from another head's weights")
        if args.resume and args.init:
            raise SystemExit("--init and --resume exclude each other: --resume continues OUT's own run, "
                             "--init starts a new run from another head")
        if args.resume:
            if not os.path.isfile(self.state_path):
                raise SystemExit(f"--resume: no {self.state_path}")
            self.resume_state = torch.load(self.state_path, map_location="cpu", weights_only=False)

    # -- setup -------------------------------------------------------------------------
    def generate_data(self) -> str | None:
        """``--generate-from`` / ``--invent``: the target answers the prompts (those of the
        file, then those it invents) through one vLLM engine, into OUT/generated.jsonl
        (kept on --resume; invented prompts also go to OUT/invented.jsonl). Runs before
        the HF copy of the target is loaded, so vLLM has the memory."""
        a = self.args
        if not a.generate_from and not a.invent:
            self.generated = None
            return None
        path = os.path.join(self.out, GENERATED_FILE)
        d = self.dist
        if not (a.resume and os.path.isfile(path)):
            prompts = data_mod.read_prompts(a.generate_from) if a.generate_from else []
            prompts = d.share(prompts[: a.num_generate] if a.num_generate else prompts)
            num_invent = a.invent // d.world + (d.rank < a.invent % d.world)
            llm = data_mod.start_engine(a.target, a.seed + d.rank,
                                        dtype="float32" if self.teacher_dtype == torch.float32 else "auto")
            try:
                if num_invent:
                    invented = invent_mod.invent_prompts(a.target, num_invent, llm=llm, tokenizer=self.tokenizer,
                                                         seed=a.seed + d.rank,
                                                         template_kwargs=a.chat_template_kwargs or None,
                                                         exclude=invent_mod.excluded_texts(a.invent_exclude),
                                                         openers=openers_mod.resolve(a.invent_openers))
                    data_mod.write_records(self._rank_file(os.path.join(self.out, INVENTED_FILE)), invented)
                    prompts += [rec["turns"] for rec in invented]
                logger.info("answering %d prompts with the target", len(prompts))
                convs = data_mod.generate_conversations(
                    a.target, prompts, temperature=a.gen_temperature, top_p=a.gen_top_p,
                    max_tokens=a.gen_max_tokens, seed=a.seed, template_kwargs=a.chat_template_kwargs or None,
                    llm=llm)
            finally:
                del llm
                data_mod.release_vllm()
            self._shard = self._rank_file(path)
            data_mod.write_jsonl(self._shard, convs, {"source": "target", "target": os.path.abspath(a.target)})
        self.generated = {"prompts": os.path.abspath(a.generate_from) if a.generate_from else None,
                          "num": a.num_generate, "invented": a.invent, "invent_openers": a.invent_openers,
                          "temperature": a.gen_temperature, "top_p": a.gen_top_p,
                          "max_tokens": a.gen_max_tokens, "file": os.path.abspath(path)}
        return path

    def _rank_file(self, path: str, rank: int | None = None) -> str:
        """``path`` itself for one process; a rank's shard of it under torchrun (this
        process's unless ``rank`` is given)."""
        if not self.dist.on:
            return path
        stem, ext = os.path.splitext(path)
        return f"{stem}.rank{self.dist.rank if rank is None else rank}{ext}"

    def merge_generated(self) -> None:
        """Under torchrun, once every process has joined the group (so every shard is
        complete): rank 0 joins the shards (rank order) into ``path`` and removes them;
        the others wait for it."""
        d = self.dist
        if not d.on or self._shard is None:
            return
        if d.main:
            for name in (GENERATED_FILE, INVENTED_FILE):
                full = os.path.join(self.out, name)
                shards = [self._rank_file(full, r) for r in range(d.world)]
                if not all(os.path.isfile(f) for f in shards):
                    continue
                records = [json.loads(line) for f in shards for line in open(f) if line.strip()]
                data_mod.write_records(full, records)
                for f in shards:
                    os.remove(f)
        d.barrier()

    def prepare_data(self, generated: str | None):
        a = self.args
        files = list(a.data) + ([generated] if generated else [])
        if not files:
            raise SystemExit("no training data: give --data, --generate-from and/or --invent")
        self.files = [os.path.abspath(f) for f in files]
        convs = data_mod.read_conversations(files)
        self.eot_ids = vocab_mod.end_of_turn_ids(self.tokenizer, self.target_eos(), a.chat_template_kwargs)
        examples = data_mod.tokenize_all(self.tokenizer, convs, self.eot_ids, a.max_length, a.chat_template_kwargs)
        if not examples:
            raise SystemExit("no usable conversation (none with assistant tokens) in the data")
        self.train_set, self.eval_set = data_mod.split_held_out(examples, a.eval_fraction)
        logger.info("%d training / %d eval conversations", len(self.train_set), len(self.eval_set))

    def target_eos(self) -> list[int]:
        gen = getattr(self.target, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if eos is None:
            eos = self.target.config.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    def build_vocab(self):
        a, V = self.args, self.target.config.vocab_size
        masks = None if a.vocab_count == "all" else [e.loss_mask for e in self.train_set]
        counts = vocab_mod.count_tokens([e.input_ids for e in self.train_set], V, masks)
        ids = vocab_mod.select_draft_vocab(counts, a.draft_vocab_size, self.eot_ids)
        self.vocab_info = {"source": f"{a.vocab_count} tokens of the training split", "positions": int(counts.sum()),
                           "coverage": vocab_mod.coverage(counts, ids), "always": self.eot_ids}
        return ids

    def setup(self):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        a = self.args
        torch.manual_seed(a.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(a.target)
        cfg = AutoConfig.from_pretrained(a.target)
        if a.time_budget is not None and not a.time_budget > 0:
            raise SystemExit(f"--time-budget {a.time_budget}: give the training's seconds, a positive number")
        if not 1 <= a.draft_layers <= cfg.num_hidden_layers:
            raise SystemExit(f"--draft-layers {a.draft_layers}: the draft tower needs 1 to {cfg.num_hidden_layers} "
                             f"layers (the target's decoder layers); a draft deeper than its target cannot be faster")
        self.layout = layout_mod.StageLayout.build(cfg.num_hidden_layers, a.num_stages, a.anchors, a.stage_layers)
        generated = self.generate_data()
        # After generation: a vLLM engine in this process sets up (and tears down) a
        # process group of its own, which must not meet the training's.
        self.dist.init(self.device)
        self.merge_generated()
        self.target = AutoModelForCausalLM.from_pretrained(a.target, dtype=self.teacher_dtype).to(self.device).eval()
        self.target.requires_grad_(False)
        self.prepare_data(generated)

        init_tensors = None
        if self.resume_state is not None:
            self.draft_ids = self.resume_state["draft_token_ids"]
            self.check_resume()
        elif a.init:
            init_tensors = self.read_init()
            self.draft_ids = init_tensors["draft_token_ids"]
        else:
            self.draft_ids = self.build_vocab()
        V = self.target.config.vocab_size
        self.d_ids = self.draft_ids.to(self.device)
        self.t2d = vocab_mod.token_to_draft_index(self.d_ids, V)
        torch.manual_seed(a.seed)
        try:
            self.model = DraftModule.from_target(self.target, self.layout, a.draft_layers, self.draft_ids,
                                                 tower_init=a.tower_init).to(self.device)
        except ValueError as e:
            raise SystemExit(f"--tower-init {a.tower_init}: {e}") from None
        if init_tensors is not None:
            self.model.load_head_tensors({k: v.float() for k, v in init_tensors.items() if k != "draft_token_ids"})
        self.ddp = None
        self.block_types = mask_mod.used_types(self.layout)
        self.decode_type = mask_mod.drafting_type(self.layout)

        per_epoch = math.ceil(len(self.train_set) / a.batch_size)
        self.steps_per_epoch = per_epoch
        self.total_steps = a.steps if a.steps is not None else max(1, math.ceil(a.epochs * per_epoch))
        warmup = a.warmup_steps if a.warmup_steps is not None else min(100, self.total_steps // 20)
        self.warmup = warmup
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
        self.plan = None   # --time-budget's latest plan (train())
        self.clock = time.monotonic   # the training time's clock (tests give a fake one)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            total, p = self.total_steps, self.plan
            if p is None:
                return max(0.0, (total - step) / max(1, total - warmup))
            # --time-budget: linear from the factor at the plan's step down to 0 at its total
            return max(0.0, p["from_factor"] * (total - step) / max(1, total - p["at_step"]))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        if self.resume_state is not None:
            st = self.resume_state
            self.model.load_head_tensors(st["model"])
            self.opt.load_state_dict(st["optimizer"])
            self.sched.load_state_dict(st["scheduler"])
            self.step, self.elapsed, self.history = st["step"], st["elapsed"], st["history"]
            self.plan = st.get("plan")
            if self.plan is not None:   # the planned length, not --steps/--epochs again
                self.total_steps = self.plan["total_steps"]
            self.vocab_info = st["vocab_info"]
            self.init_info = st.get("init_info")
            self.tower_init = st.get("tower_init", "random")
            # Entries logged after the last checkpoint belong to the interrupted run:
            # the log restarts from the checkpoint's history.
            if self.dist.main:
                with open(os.path.join(self.out, LOG_FILE), "w") as f:
                    f.writelines(json.dumps(h) + "\n" for h in self.history)
            logger.info("resumed at step %d", self.step)
        if self.dist.on:   # gradients averaged over the processes in backward
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index or 0] if self.device.type == "cuda" else None)

    def read_init(self) -> dict:
        """The ``--init`` head's tensors, after checking that it fits this run."""
        a = self.args
        try:
            cfg = checkpoint.read_config(a.init)
            checkpoint.check_fits_target(cfg, a.init, self.target.config, self.layout.num_stages,
                                         self.layout.stage_layers)
            tensors = checkpoint.load_tensors(a.init)
            checkpoint.check_tensors(cfg, tensors, a.init)
        except checkpoint.HeadError as e:
            raise SystemExit(f"--init: {e}") from None
        problems = []
        if list(cfg.anchors) != list(self.layout.anchors):
            problems.append(f"anchors: head {cfg.anchors}, this run {list(self.layout.anchors)}")
        if cfg.num_draft_layers != a.draft_layers:
            problems.append(f"draft layers: head {cfg.num_draft_layers}, --draft-layers {a.draft_layers}")
        if problems:
            raise SystemExit(f"--init: head {a.init!r} does not fit this run: " + "; ".join(problems))
        prov = cfg.provenance or {}
        self.vocab_info = {**(prov.get("draft_vocab") or {}), "source": f"the --init head {os.path.abspath(a.init)}"}
        self.init_info = {"head": os.path.abspath(a.init), "steps": prov.get("steps"),
                          "data_files": prov.get("data_files")}
        return tensors

    def check_resume(self):
        saved = self.resume_state["config"]
        now = self.config_key()
        diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if diff:
            raise SystemExit(f"--resume: {self.state_path} was trained with different settings: {diff}")

    def config_key(self) -> dict:
        a = self.args
        return {"target_layers": self.layout.num_layers, "num_stages": self.layout.num_stages,
                "stage_layers": self.layout.stage_layers, "anchors": list(self.layout.anchors),
                "draft_layers": a.draft_layers, "draft_vocab_size": a.draft_vocab_size,
                "data": self.files, "batch_size": a.batch_size, "max_length": a.max_length,
                "seed": a.seed, "eval_fraction": a.eval_fraction}

    # -- one micro-batch ------------------------------------------------------------------
    def batch_loss(self, examples, fill: int, rep_depths: dict[int, int], model=None):
        logits, t_logits, t_argmax, mask = self.batch_logits(examples, fill, rep_depths, model)
        return distill_loss(logits, t_logits, t_argmax, mask, self.t2d, self.args.temperature)

    def batch_logits(self, examples, fill: int, rep_depths: dict[int, int], model=None):
        """``(draft logits, teacher draft-vocabulary logits, teacher argmax, trained-token
        mask)`` of one micro-batch at pipeline ``fill``."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, valid, lmask = data_mod.collate(
            examples, pad, attention_mod.padded_length if self.attention == "flex" else None)
        ids, valid, lmask = ids.to(self.device), valid.to(self.device), lmask.to(self.device)
        feats, t_logits, t_argmax = teacher_forward(self.target, ids, valid, self.layout.anchors, self.d_ids)
        S = ids.shape[1]
        autocast = self.dtype != torch.float32
        if self.attention == "flex":
            required = mask_mod.required_types(self.layout, S, fill, self.block_types, rep_depths,
                                               device=self.device)
            attn = attention_mod.block_mask(required, self.block_types, valid)
        else:
            struct = mask_mod.structural_mask(self.layout, S, fill, self.block_types, rep_depths,
                                              device=self.device)
            attn = mask_mod.attention_bias(struct, valid, len(self.block_types),
                                           dtype=self.dtype if autocast else torch.float32)
        pos = mask_mod.position_ids(valid)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            logits = (model or self.model)(feats, pos, attn, self.block_types, self.decode_type)
        return logits, t_logits, t_argmax, lmask & valid

    def batch_for_step(self, step: int):
        epoch, i = divmod(step, self.steps_per_epoch)
        if getattr(self, "_epoch", (None,))[0] != epoch:
            lengths = [len(e.input_ids) for e in self.train_set]
            self._epoch = (epoch, epoch_batches(lengths, self.args.batch_size, self.args.seed, epoch))
        return [self.train_set[j] for j in self._epoch[1][i]]

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        if not self.eval_set:
            return None
        self.model.eval()
        n = self.layout.num_stages
        rep = mask_mod.representative_depths(self.layout)
        order = sorted(range(len(self.eval_set)), key=lambda i: len(self.eval_set[i].input_ids))
        bs = self.args.batch_size
        loss_sum, valid, correct = 0.0, 0, 0
        for k in self.dist.share(range(0, len(order), bs)):   # under torchrun, every world-th batch
            out = self.batch_loss([self.eval_set[i] for i in order[k:k + bs]], n, rep)
            loss_sum += float(out.loss.detach()) * out.num_valid
            valid += out.num_valid
            correct += out.num_correct
        loss_sum, valid, correct = self.dist.sum([loss_sum, valid, correct], self.device)
        valid, correct = int(valid), int(correct)
        self.model.train()
        return {"step": self.step, "eval_loss": loss_sum / valid if valid else float("nan"),
                "eval_accuracy": correct / valid if valid else float("nan"), "eval_positions": valid,
                "fill": n}

    # -- checkpoints -------------------------------------------------------------------
    def head_config(self, finished: bool) -> checkpoint.HeadConfig:
        a, cfg = self.args, self.target.config
        last_eval = next((h for h in reversed(self.history) if "eval_accuracy" in h), None)
        prov = {
            "trainer": "vllm_spd.train", "target": os.path.abspath(a.target), "data_files": self.files,
            "generated": self.generated, "steps": self.step, "total_steps": self.total_steps,
            "epochs": self.step / self.steps_per_epoch, "train_examples": len(self.train_set),
            "eval_examples": len(self.eval_set), "train_time_s": round(self.elapsed, 1),
            "final_eval_loss": last_eval["eval_loss"] if last_eval else None,
            "final_eval_accuracy": last_eval["eval_accuracy"] if last_eval else None,
            "finished": finished, "seed": a.seed, "lr": a.lr, "batch_size": a.batch_size,
            "max_length": a.max_length, "temperature": a.temperature,
            "fill": {"full_prob": a.full_fill_prob, "partial": "uniform [1, n-1]"},
            "mask": "deepest-prefix + staircase, partial-fill cut-off delta >= fill - depth",
            "sample_type_depths": a.sample_type_depths, "draft_vocab": self.vocab_info,
            "init": self.init_info, "tower_init": self.tower_init,
            "time_budget_s": a.time_budget, "time_budget_plan": self.plan,
            "held_out": "prompts whose sha256 falls below --eval-fraction",
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return checkpoint.HeadConfig(
            target_architecture=(cfg.architectures or ["?"])[0], target_model_type=cfg.model_type,
            hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, num_hidden_layers=cfg.num_hidden_layers,
            num_stages=self.layout.num_stages, stage_layers=self.layout.stage_layers,
            anchors=list(self.layout.anchors), num_draft_layers=a.draft_layers,
            draft_vocab_size=int(self.draft_ids.numel()), layer_overrides={}, trained=True, provenance=prov)

    def save(self, finished: bool = False) -> None:
        if not self.dist.main:
            return
        state = {
            "step": self.step, "elapsed": self.elapsed, "history": self.history,
            "model": self.model.head_tensors(self.draft_ids), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "draft_token_ids": self.draft_ids.cpu(),
            "vocab_info": self.vocab_info, "init_info": self.init_info,
            "tower_init": self.tower_init, "config": self.config_key(),
            "total_steps": self.total_steps, "plan": self.plan,
        }
        tmp = self.state_path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)
        tensors = self.model.head_tensors(self.draft_ids, _DTYPES[self.args.save_dtype])
        checkpoint.save_head(self.out, self.head_config(finished), tensors)

    def log(self, entry: dict) -> None:
        self.history.append(entry)
        if not self.dist.main:
            return
        with open(os.path.join(self.out, LOG_FILE), "a") as f:
            f.write(json.dumps(entry) + "\n")

    def plan_steps(self, spent_s: float, step_s: float, eval_s: float | None) -> None:
        """``--time-budget``: the most steps (up to --steps/--epochs) that end in the
        budget become the total, and the learning rate decays linearly from its present
        value to 0 there (so a new plan never makes it jump). An evaluation not yet timed
        is taken as half a step per held-out batch (a forward without backward)."""
        a = self.args
        if not self.eval_set:
            eval_s = 0.0
        elif eval_s is None:
            eval_s = step_s * math.ceil(len(self.eval_set) / a.batch_size) / 2
        most = self.plan["most_steps"] if self.plan else self.total_steps
        factor = self.sched.lr_lambdas[0](self.step)   # under the schedule so far
        total = budget.fit_steps(a.time_budget, spent_s, self.step, step_s, eval_s, a.eval_every, most)
        self.plan = {"at_step": self.step, "from_factor": factor, "spent_s": round(spent_s, 2),
                     "step_s": round(step_s, 4), "eval_s": round(eval_s, 2), "most_steps": most,
                     "total_steps": total, "plans": (self.plan["plans"] + 1) if self.plan else 1}
        self.total_steps = total
        logger.info("--time-budget %.0f s: %.3f s a step, %.1f s an evaluation, %.0f s spent at step %d: "
                    "%d steps in all (at most %d)", a.time_budget, step_s, eval_s, spent_s, self.step, total, most)

    # -- the loop ----------------------------------------------------------------------
    def train_step(self, fill: int, rep: dict[int, int]) -> tuple[float, float, int, float]:
        """One optimizer step on the step's global batch; returns its loss, accuracy and
        trained positions (over all processes) and the gradient norm.

        Under torchrun each process takes every world-th conversation of the batch and
        weighs its mean loss by ``world * its positions / all positions``: the gradients
        that DistributedDataParallel averages are then those of one process's loss over
        the whole batch. A process left without a conversation (a short last batch) runs
        one at weight 0, as every process must take part in the gradients' reduction."""
        a, d = self.args, self.dist
        batch = self.batch_for_step(self.step)
        mine = d.share(batch)
        out = self.batch_loss(mine or batch[:1], fill, rep, self.ddp)
        num = out.num_valid if mine else 0
        loss = out.loss
        if d.on:
            loss_sum, num_all, correct_all = d.sum([float(out.loss.detach()) * num, num,
                                                     out.num_correct if mine else 0], self.device)
            loss = out.loss * (d.world * num / num_all if num_all else 0.0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.step += 1
        if not d.on:
            return float(out.loss.detach()), out.accuracy, out.num_valid, float(gnorm)   # waits for the step on a GPU
        num_all = int(num_all)
        return (loss_sum / num_all if num_all else 0.0, correct_all / num_all if num_all else float("nan"),
                num_all, float(gnorm))

    def train(self) -> dict:
        from tqdm.auto import tqdm

        a = self.args
        save_every = a.save_every or a.eval_every
        def last_step() -> int:   # where this run stops (a time-budget plan moves the total)
            return self.total_steps if a.stop_after is None else min(self.total_steps, a.stop_after)

        end = last_step()
        clock = self.clock
        t0 = clock()    # self.elapsed + (now - t0): the training time so far
        eval_s = None   # the last evaluation's seconds
        if self.step == 0 and self.resume_state is None:
            ev = self.evaluate()
            eval_s = clock() - t0
            if ev:
                self.log(ev)
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=a.no_progress or not self.dist.main,
                   dynamic_ncols=True,
                   desc="spd-train")
        ema_loss = ema_acc = None
        # --time-budget: planned when warm-up ends (after at least 10 steps of this run) from the
        # loop's time per step, its evaluations and checkpoints set aside and evaluations priced
        # apart; planned again at every checkpoint step from all the loop's time per step.
        plan_at = min(max(self.warmup, self.step + 10), self.total_steps - 1)
        loop_start, loop_step, aside = clock(), self.step, 0.0
        while self.step < end:
            rng = random.Random(a.seed * 1_000_003 + self.step)
            fill = draw_fill(self.layout.num_stages, a.full_fill_prob, rng)
            rep = mask_mod.representative_depths(self.layout, rng if a.sample_type_depths else None)
            loss, accuracy, positions, gnorm = self.train_step(fill, rep)
            if positions:
                ema_loss = loss if ema_loss is None else 0.9 * ema_loss + 0.1 * loss
                ema_acc = accuracy if ema_acc is None else 0.9 * ema_acc + 0.1 * accuracy
            bar.update(1)
            bar.set_postfix(loss=f"{ema_loss if ema_loss is not None else float('nan'):.4f}",
                            acc=f"{ema_acc if ema_acc is not None else float('nan'):.3f}", fill=fill,
                            lr=f"{self.sched.get_last_lr()[0]:.2e}")
            if self.step % a.log_every == 0 or self.step == end:
                self.log({"step": self.step, "loss": loss, "accuracy": accuracy, "positions": positions,
                          "fill": fill, "lr": self.sched.get_last_lr()[0], "grad_norm": float(gnorm)})
            if a.time_budget and self.step < end and (self.plan is None and self.step >= plan_at or
                                                      self.plan is not None and self.step % save_every == 0):
                now = clock()
                if self.plan is None:
                    timing = [self.elapsed + now - t0, (now - loop_start - aside) / (self.step - loop_step),
                              -1.0 if eval_s is None else eval_s]
                else:
                    timing = [self.elapsed + now - t0, (now - loop_start) / (self.step - loop_step), 0.0]
                spent, step_s, ev_s = self.dist.agree(timing, self.device)   # rank 0's clock for all
                self.plan_steps(spent, step_s, None if ev_s < 0 else ev_s)
                end = last_step()
                bar.total = self.total_steps
                bar.refresh()
            if a.time_budget and self.step < end and self.dist.agree(
                    [float(self.elapsed + clock() - t0 >= a.time_budget)], self.device)[0]:
                logger.warning("--time-budget %.0f s spent at step %d of %d: stopping here (the schedule has "
                               "not ended; the head is saved unfinished)", a.time_budget, self.step,
                               self.total_steps)
                end = self.step
            finished = self.step == self.total_steps
            if self.step % a.eval_every == 0 or self.step == end:
                started = clock()
                ev = self.evaluate()
                eval_s = clock() - started
                aside += eval_s
                if ev:
                    self.log(ev)
                    if self.dist.main:
                            bar.write(f"step {self.step}: eval loss {ev['eval_loss']:.4f}, draft accuracy "
                                  f"{ev['eval_accuracy']:.4f} ({ev['eval_positions']} positions)")
            if self.step % save_every == 0 or self.step == end:
                started = clock()
                self.elapsed += started - t0
                t0 = started
                self.save(finished=finished)
                aside += clock() - started
        bar.close()
        last_eval = next((h for h in reversed(self.history) if "eval_accuracy" in h), None)
        return {"time_budget_plan": self.plan,
                "out": os.path.abspath(self.out), "step": self.step, "total_steps": self.total_steps,
                "finished": self.step == self.total_steps, "eval": last_eval,
                "draft_vocab_size": int(self.draft_ids.numel())}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    dist = Dist.from_env()
    dist.pin_gpu()   # before anything starts CUDA
    logging.basicConfig(level=logging.INFO if dist.main else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s" if not dist.on else
                        f"%(asctime)s [rank {dist.rank}] %(name)s: %(message)s")
    trainer = Trainer(args, dist)
    try:
        trainer.setup()
        summary = trainer.train()
        # Every process past its last collective before any tears the group down: a gloo
        # process group destroyed while its peer still works aborted that peer at exit.
        dist.barrier()
    finally:
        dist.close()
    if dist.main:
        print(json.dumps(summary))
    return summary
