"""Distillation loss on the draft vocabulary.

Row t of the draft output predicts token t+1. The teacher distribution is the target's
logits at t restricted to the draft columns and renormalised (softmax over those K
logits). A position counts ("valid") when the token at t+1 is a trained (assistant)
token and the teacher's argmax over the FULL vocabulary is a draft token: where the
target would pick a token the head cannot propose, no draft can be accepted anyway.

Loss = mean over valid positions of ``KL(teacher || student) * T^2`` at temperature T;
draft accuracy = fraction of valid positions where the student's argmax (a draft index)
is the teacher's argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOutput:
    loss: torch.Tensor        # scalar, differentiable
    accuracy: float           # top-1 agreement on valid positions (nan if none)
    num_valid: int
    num_correct: int


def valid_positions(loss_mask: torch.Tensor, teacher_argmax: torch.Tensor,
                    token_to_draft: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` bool: position t is trained iff ``loss_mask[t+1]`` and the teacher's
    argmax at t is in the draft vocabulary (the last position never is)."""
    nxt = torch.zeros_like(loss_mask, dtype=torch.bool)
    nxt[:, :-1] = loss_mask[:, 1:].bool()
    return nxt & (token_to_draft[teacher_argmax] >= 0)


def distill_loss(student_logits: torch.Tensor, teacher_draft_logits: torch.Tensor,
                 teacher_argmax: torch.Tensor, loss_mask: torch.Tensor,
                 token_to_draft: torch.Tensor, temperature: float = 1.0) -> LossOutput:
    """``student_logits``/``teacher_draft_logits``: ``[B, S, K]`` (the teacher already
    restricted to the draft columns, in draft-index order); ``teacher_argmax``:
    ``[B, S]`` full-vocab argmax of the teacher; ``loss_mask``: ``[B, S]`` 1 on trained
    (assistant, non-padding) tokens; ``token_to_draft``: ``[V]`` (-1 = not a draft token).
    """
    valid = valid_positions(loss_mask, teacher_argmax, token_to_draft)
    num = int(valid.sum())
    if num == 0:
        return LossOutput(student_logits.sum() * 0.0, float("nan"), 0, 0)
    s = student_logits[valid].float() / temperature
    t = teacher_draft_logits[valid].float() / temperature
    log_q = F.log_softmax(s, -1)
    log_p = F.log_softmax(t, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    loss = kl.mean() * temperature ** 2
    target = token_to_draft[teacher_argmax[valid]]
    correct = int((s.argmax(-1) == target).sum())
    return LossOutput(loss, correct / num, num, correct)
