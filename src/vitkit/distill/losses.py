"""The distillation losses of DeiT (Touvron et al., ICML 2021, Section 5), on logits.

- soft: (1 - alpha) CE(student, labels) + alpha tau^2 KL(softmax(teacher / tau) || softmax(student / tau)),
  Hinton et al.'s knowledge distillation; the KL term is averaged over the batch and scaled by
  tau^2 so its gradients keep their size whatever the temperature.
- hard: 1/2 CE(student, labels) + 1/2 CE(student, argmax teacher): the teacher's decision taken
  as a second label, which DeiT found better than soft targets for ViT students.
- token: the hard loss split over two heads: the class head learns the labels, the
  distillation token's head the teacher's decisions.

Labels may be class indices or probabilities (MixUp / CutMix, label smoothing applied by the
caller's `smoothing`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_distillation(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      alpha: float = 0.5, tau: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
    """(1 - alpha) CE + alpha tau^2 KL(teacher || student) at temperature tau."""
    s, t = student.float(), teacher.float()
    ce = F.cross_entropy(s, labels, label_smoothing=smoothing)
    kl = F.kl_div(F.log_softmax(s / tau, dim=1), F.log_softmax(t / tau, dim=1), reduction="batchmean",
                  log_target=True)
    return (1 - alpha) * ce + alpha * tau * tau * kl


def hard_distillation(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      smoothing: float = 0.0, student_dist: torch.Tensor | None = None) -> torch.Tensor:
    """1/2 CE(student, labels) + 1/2 CE(student_dist or student, argmax teacher)."""
    s = student.float()
    d = s if student_dist is None else student_dist.float()
    return 0.5 * F.cross_entropy(s, labels, label_smoothing=smoothing) + \
        0.5 * F.cross_entropy(d, teacher.float().argmax(1))
