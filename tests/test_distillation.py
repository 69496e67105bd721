"""Embedding distillation: its loss by hand, and a student that learns a teacher the test trains."""

import json

import pytest
import torch

from selfsup.cli import main
from selfsup.losses.noncontrastive import feature_distillation_loss


def test_feature_distillation_loss_is_two_minus_two_cosine():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[4.0, 3.0], [-2.0, 0.0]])
    cos = torch.tensor([24 / 25, -1.0])
    assert torch.allclose(feature_distillation_loss(s, t), (2 - 2 * cos).mean())
    # scale-free in both arguments; zero when aligned
    assert torch.allclose(feature_distillation_loss(5 * s, 0.1 * s), torch.tensor(0.0), atol=1e-7)
    t.requires_grad_(True)
    feature_distillation_loss(s.requires_grad_(True), t).backward()
    assert t.grad is None or torch.all(t.grad == 0)      # the teacher is a fixed target


@pytest.mark.slow
def test_student_learns_a_teacher_trained_here(tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["pretrain", "-p", "simclr_digits", "-o", str(teacher), "train.steps=30",
                 "train.progress=false", "eval.monitor=false", "model.width=1.0"]) == 0
    student = tmp_path / "student"
    assert main(["pretrain", "-p", "simclr_digits", "-o", str(student), "method.name=distillation",
                 f"method.teacher={teacher}", "method.proj_hidden_dim=128", "model.width=0.5",
                 "train.steps=40", "train.log_every=1", "train.progress=false", "eval.monitor=false",
                 "optim.name=adamw", "optim.lr=0.002", "optim.weight_decay=0.0"]) == 0
    rows = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    cos = [r["cosine"] for r in rows if r.get("kind") == "train" and "cosine" in r]
    assert len(cos) >= 3 and cos[-1] > cos[0] + 0.1, cos     # the student moves toward the teacher
    from selfsup.train.checkpoint import load_checkpoint

    state = load_checkpoint(student / "checkpoints" / "last.pt")["model"]
    assert not any("teacher" in k for k in state), "the teacher is never checkpointed"
