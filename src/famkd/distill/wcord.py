"""WCoRD: Wasserstein Contrastive Representation Distillation (Chen, Wang, Gan, Liu, Henao and Carin, CVPR 2021).

Global term: the dual form of the Wasserstein dependency between teacher and student, estimated
contrastively with a critic over a memory of negatives, CRD style (famkd.distill.contrastive).
Local term: the primal form, the entropic optimal-transport cost between the batch's teacher and
student embeddings under the cosine distance, computed by log-domain Sinkhorn iterations.
docs/method.md gives the formulas and which defaults come from where.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.base import TrainingData
from famkd.distill.contrastive import ContrastiveDistiller, ContrastOptions, gathered_with_gradients
from famkd.distill.registry import register_distiller
from famkd.settings import setting


def sinkhorn_cost(cost: Tensor, epsilon: float, iterations: int) -> Tensor:
    """<P, C> for the entropic OT plan P = argmin <P, C> - epsilon H(P) between uniform marginals.

    `cost` (n, m); log-domain Sinkhorn (stable for small epsilon), differentiable through the
    iterations. Each iteration fits the row marginal then the column marginal:
    f_i = -eps logsumexp_j((g_j - C_ij) / eps + log b_j), g_j = -eps logsumexp_i((f_i - C_ij) / eps + log a_i),
    and P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps), with a = 1/n, b = 1/m.
    """
    rows, columns = cost.shape
    log_a, log_b = -math.log(rows), -math.log(columns)
    f, g = cost.new_zeros(rows), cost.new_zeros(columns)
    for _ in range(iterations):
        f = -epsilon * torch.logsumexp((g[None, :] - cost) / epsilon + log_b, dim=1)
        g = -epsilon * torch.logsumexp((f[:, None] - cost) / epsilon + log_a, dim=0)
    plan = torch.exp((f[:, None] + g[None, :] - cost) / epsilon + log_a + log_b)
    return (plan * cost).sum()


@dataclass
class WCoRDOptions(ContrastOptions):
    """The contrastive options (global term, CRD's defaults) plus the local term and the critic.

    loss = ce_weight * CE + loss_weight * global NCE loss + local_weight * Sinkhorn OT cost;
    sinkhorn_epsilon: entropic regularisation (costs lie in [0, 2]); sinkhorn_iterations: Sinkhorn
    iterations; critic_hidden: 0 = the critic embeds each side linearly (CRD's), > 0 = an MLP with
    one hidden layer of that width.
    """

    local_weight: float = setting(0.8, minimum=0.0)
    sinkhorn_epsilon: float = setting(0.05, above=0.0)
    sinkhorn_iterations: int = setting(50, minimum=1)
    critic_hidden: int = setting(0, minimum=0)


@register_distiller("wcord")
class WCoRD(ContrastiveDistiller):
    """CE + the global (contrastive, dual) term + the local (Sinkhorn, primal) term. Options: WCoRDOptions."""

    Options = WCoRDOptions
    options: WCoRDOptions

    def __init__(self, student: nn.Module, teacher: nn.Module, options: WCoRDOptions, data: TrainingData):
        super().__init__(student, teacher, options, data, hidden=options.critic_hidden)

    def forward(
        self, images: Tensor, targets: Tensor, epoch: int, indices: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        options = self.options
        student, student_embedding, teacher_embedding = self.encode(images)
        return student.logits, {
            "ce": options.ce_weight * F.cross_entropy(student.logits, targets),
            "wcord_global": options.loss_weight * self.contrast_loss(student_embedding, teacher_embedding, indices),
            "wcord_local": options.local_weight * self.local_cost(student_embedding, teacher_embedding),
        }

    def local_cost(self, student: Tensor, teacher: Tensor) -> Tensor:
        """The entropic OT cost between the batch's teacher and student embeddings, cost 1 - cosine, in float32.

        Under torchrun the batch is the global one: every process gathers the embeddings (with their gradients)
        and computes the same cost, as one process would."""
        student, teacher = gathered_with_gradients(student), gathered_with_gradients(teacher)
        with torch.autocast(device_type=student.device.type, enabled=False):
            cost = 1.0 - teacher.float() @ student.float().T
            return sinkhorn_cost(cost, self.options.sinkhorn_epsilon, self.options.sinkhorn_iterations)
