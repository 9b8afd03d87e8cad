"""Pieces shared by the contrastive distillers `crd` and `wcord` (docs/method.md).

Both embed the student's and the teacher's pooled vectors (`Embed`), keep memories of past
embeddings that supply each sample's positive and negatives (`SampleMemory`, the published
per-sample bank, or `QueueMemory`, a bounded FIFO) and score the two contrasts with CRD's NCE
loss (`nce_loss`). Reference: Tian, Krishnan and Isola, "Contrastive Representation
Distillation", ICLR 2020, and its benchmark code RepDistiller (crd/memory.py, crd/criterion.py).

Negatives are drawn with tensor ops from the memory's own generator, seeded from the run's seed and saved
with the memory (its extra state), so a checkpoint replays them exactly; a sample is never its own negative.
With the training labels known, the bank draws them as the benchmark does (its `exact` mode): nce_k distinct
images of other classes (`draw_other_classes`).

Several processes (torchrun) share one memory: each gathers the global batch's embeddings and indices, draws
the global batch's negatives from the same generator and writes the same rows, so every process holds the
same memory, and each scores its own share of the batch. The normalisation constant Z is the mean over the
processes' estimates. With equal shares this is the single-process computation on the global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from famkd.distill.base import Distiller, TrainingData
from famkd.distill.options import DistillOptions
from famkd.errors import ConfigError
from famkd.models.features import Features
from famkd.models.taps import feature_info
from famkd.settings import setting

NCE_EPS = 1e-7  # the published criterion's guard in P / (P + K Pn + eps)
UNSET = -1.0  # a normalisation constant not yet estimated


@dataclass
class ContrastOptions(DistillOptions):
    """Options of every contrastive distiller; defaults are RepDistiller's CIFAR-100 CRD settings.

    loss = ce_weight * CE + loss_weight * (NCE loss of the student-anchored contrast + of the teacher-anchored one).
    feat_dim: embedding size; nce_k: negatives per sample; nce_t: temperature; nce_mom: memory momentum;
    queue_size: 0 = a memory row per training image (published), > 0 = a FIFO of the last queue_size embeddings.
    """

    loss_weight: float = setting(0.8, minimum=0.0)
    ce_weight: float = setting(1.0, minimum=0.0)
    feat_dim: int = setting(128, minimum=1)
    nce_k: int = setting(16384, minimum=1)
    nce_t: float = setting(0.07, above=0.0)
    nce_mom: float = setting(0.5, minimum=0.0)
    queue_size: int = setting(0, minimum=0)

    def __post_init__(self) -> None:
        if self.nce_mom >= 1.0:
            raise ConfigError(f"distill.nce_mom={self.nce_mom!r} is too large: it must be < 1 (1 never updates)")
        if self.queue_size == 1:
            raise ConfigError(
                "distill.queue_size=1 is too small: use 0 (a memory row per training image) or at least the batch size"
            )


class Embed(nn.Module):
    """(B, C) -> L2-normalised (B, out_channels) float32: a linear map (CRD's), or, with `hidden` > 0, an MLP
    Linear(C, hidden) - ReLU - Linear(hidden, out_channels)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 0):
        super().__init__()
        if hidden:
            self.layers = nn.Sequential(
                nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_channels)
            )
        else:
            self.layers = nn.Sequential(nn.Linear(in_channels, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(at_least_float32(self.layers(x.flatten(1))), dim=1)


def at_least_float32(x: Tensor) -> Tensor:
    """x in float32, or float64 when it is (a reduced precision never scores the memories)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def initial_memory(rows: int, dim: int) -> Tensor:
    """Rows uniform in [-stdv, stdv], stdv = 1 / sqrt(dim / 3) (as published: rows of unit norm on average)."""
    stdv = 1.0 / math.sqrt(dim / 3)
    return torch.rand(rows, dim).mul_(2 * stdv).add_(-stdv)


def draw_others(positives: Tensor, size: int, count: int, generator: torch.Generator | None = None) -> Tensor:
    """(B, count) indices, row b uniform over [0, size) without positives[b]: drawn from size - 1 values, those
    at or past the positive shifted up by one."""
    drawn = torch.randint(size - 1, (positives.shape[0], count), device=positives.device, generator=generator)
    return drawn + (drawn >= positives[:, None]).long()


def draw_other_classes(
    positives: Tensor, labels: Tensor, count: int, generator: torch.Generator | None = None
) -> Tensor:
    """(B, count) indices, row b `count` distinct images whose label differs from positives[b]'s, uniformly
    (with replacement where fewer than `count` such images exist), as RepDistiller's `exact` sampling.

    Without replacement it is a random ranking: every other-class image gets a uniform key, same-class
    ones a key above them all, and the `count` smallest keys are kept (one O(B * N) draw, no loops)."""
    others = labels[None, :] != labels[positives][:, None]
    available = int(others.sum(dim=1).min())
    if available < count:
        return torch.multinomial(others.float(), count, replacement=True, generator=generator)
    keys = torch.rand(others.shape, device=labels.device, generator=generator).masked_fill_(~others, 2.0)
    return keys.topk(count, dim=1, largest=False, sorted=False).indices


def nce_loss(log_probs: Tensor, noise_size: int) -> Tensor:
    """CRD's NCE loss (Tian et al. Eq. 18; RepDistiller ContrastLoss) of log P (B, 1 + K), positive first.

    With m = K negatives and the uniform noise Pn = 1 / noise_size:
    -(1/B) sum_b [log(P_pos / (P_pos + m Pn + eps)) + sum_k log(m Pn / (P_k + m Pn + eps))], in log space.
    """
    negatives = log_probs.shape[1] - 1
    noise = negatives / noise_size
    log_denominator = torch.logaddexp(log_probs, log_probs.new_tensor(math.log(noise + NCE_EPS)))
    log_positive = log_probs[:, 0] - log_denominator[:, 0]
    log_negative = math.log(noise) - log_denominator[:, 1:]
    return -(log_positive.sum() + log_negative.sum()) / log_probs.shape[0]


class ContrastMemory(nn.Module):
    """Student and teacher memories (rows x feat_dim buffers) and CRD's two contrasts against them.

    The student's embedding is scored against the teacher memory and the teacher's against the
    student memory, at the same rows (positive first, then nce_k negatives): P = exp(score / T) / Z,
    with each contrast's Z = rows * mean(exp(score / T)) estimated once, from the first batch, as
    published. Subclasses choose the rows and how the batch is written (`select`).
    """

    student_memory: Tensor
    teacher_memory: Tensor
    normalizers: Tensor

    def __init__(self, rows: int, feat_dim: int, nce_k: int, temperature: float):
        super().__init__()
        self.nce_k = nce_k
        self.temperature = temperature
        self.register_buffer("student_memory", initial_memory(rows, feat_dim))
        self.register_buffer("teacher_memory", initial_memory(rows, feat_dim))
        self.register_buffer("normalizers", torch.full((2,), UNSET))  # Z of the student- and teacher-anchored
        self.seed = torch.initial_seed()  # the run's seed: the same on every process
        self._generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None  # restored from a checkpoint, applied at the next draw

    def generator(self, device: torch.device) -> torch.Generator:
        """The negatives' generator on `device` (created on first use, from the seed or a restored state)."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
        return self._generator

    def get_extra_state(self) -> Tensor:
        """The generator's state (a uint8 tensor), saved with the memory."""
        return self.generator(self.student_memory.device).get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self._generator_state, self._generator = state, None

    @property
    def rows(self) -> int:
        """The number of rows of each memory (N, or the queue size): the size of the uniform noise."""
        return self.student_memory.shape[0]

    def select(self, student: Tensor, teacher: Tensor, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write the batch's (detached) embeddings; return the student and teacher memories to score against
        and the rows (B, 1 + nce_k) of each sample's positive and negatives."""
        raise NotImplementedError

    def forward(self, student: Tensor, teacher: Tensor, indices: Tensor) -> Tensor:
        """The summed NCE losses of both contrasts for embeddings (B, feat_dim) of the images at `indices`."""
        with torch.autocast(device_type=student.device.type, enabled=False):
            student, teacher = at_least_float32(student), at_least_float32(teacher)
            shared, share = global_batch([student.detach(), teacher.detach(), indices])
            student_memory, teacher_memory, rows = self.select(*shared)
            rows = rows[share]
            student_scores = (student @ teacher_memory.T).gather(1, rows)
            teacher_scores = (teacher @ student_memory.T).gather(1, rows)
            scores = torch.stack([student_scores, teacher_scores]) / self.temperature
            log_probs = scores - self.normalization(scores).log()[:, None, None]
            return nce_loss(log_probs[0], self.rows) + nce_loss(log_probs[1], self.rows)

    @torch.no_grad()
    def normalization(self, scores: Tensor) -> Tensor:
        """Each contrast's Z, set from `scores` / T (2, B, 1 + K) on the first call, kept after (no host sync)."""
        estimate = scores.exp().mean(dim=(1, 2)) * self.rows
        if sharing():
            dist.all_reduce(estimate)
            estimate /= dist.get_world_size()
        self.normalizers.copy_(torch.where(self.normalizers == UNSET, estimate, self.normalizers))
        return self.normalizers.clone()


def sharing() -> bool:
    """Whether several processes share the memory (an initialised process group of more than one)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_batch(tensors: list[Tensor]) -> tuple[list[Tensor], slice]:
    """Each of `tensors` (this process's share of a batch, equal on every process) gathered over the processes in
    rank order, and the rows of this process's share; the tensors themselves with one process."""
    if not sharing():
        return tensors, slice(None)
    world, rank, batch = dist.get_world_size(), dist.get_rank(), tensors[0].shape[0]
    gathered = []
    for tensor in tensors:
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        gathered.append(torch.cat(parts))
    return gathered, slice(rank * batch, (rank + 1) * batch)


def gathered_with_gradients(tensor: Tensor) -> Tensor:
    """`tensor` (this process's share of a batch) gathered over the processes in rank order, through an all-gather
    whose backward returns each process the gradients of its share; `tensor` itself with one process.

    Every process computes the same loss of the gathered batch, so each share's gradient arrives summed over
    the processes, and DDP's average of the parameters' gradients is the one-process gradient."""
    if not sharing():
        return tensor
    import torch.distributed.nn.functional as distributed_autograd

    return torch.cat(distributed_autograd.all_gather(tensor.contiguous()))


class SampleMemory(ContrastMemory):
    """The published memory bank: one row per training image, updated with momentum.

    Sample i's positive is row i, its negatives nce_k rows: with the training labels, distinct images
    of other classes (`draw_other_classes`, as published); without them, uniformly from the other
    N - 1 images (with replacement). The batch is scored against the memories as they were; then
    exactly the batch's rows become normalise(momentum * row + (1 - momentum) * embedding).
    """

    labels: Tensor | None

    def __init__(
        self,
        num_samples: int,
        feat_dim: int,
        nce_k: int,
        temperature: float,
        momentum: float,
        labels: Tensor | None = None,
    ):
        super().__init__(num_samples, feat_dim, nce_k, temperature)
        self.momentum = momentum
        # Not saved: the labels come with the data on every run.
        self.register_buffer("labels", None if labels is None else labels.clone(), persistent=False)

    def negatives(self, indices: Tensor) -> Tensor:
        generator = self.generator(indices.device)
        if self.labels is None:
            return draw_others(indices, self.rows, self.nce_k, generator)
        return draw_other_classes(indices, self.labels, self.nce_k, generator)

    def select(self, student: Tensor, teacher: Tensor, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rows = torch.cat([indices[:, None], self.negatives(indices)], dim=1)
        scored = self.student_memory, self.teacher_memory
        # New tensors, not in-place writes: autograd keeps the scored memories for the backward pass.
        self.student_memory = self.updated(self.student_memory, student, indices)
        self.teacher_memory = self.updated(self.teacher_memory, teacher, indices)
        return *scored, rows

    def updated(self, memory: Tensor, embedding: Tensor, indices: Tensor) -> Tensor:
        """A copy of `memory` whose rows at `indices` are normalise(momentum * row + (1 - momentum) * embedding)."""
        mixed = self.momentum * memory[indices] + (1.0 - self.momentum) * embedding
        return memory.index_copy(0, indices, F.normalize(mixed, dim=1))


class QueueMemory(ContrastMemory):
    """A FIFO of the last `size` embeddings of each side (MoCo style), for training sets too large for a bank.

    The batch is written first, over the oldest slots; sample i's positive is the slot just written
    with the other side's current embedding, its negatives nce_k slots drawn uniformly (with
    replacement) from those not holding sample i. Slots not yet written hold the published random rows.
    """

    owners: Tensor
    head: Tensor

    def __init__(self, size: int, feat_dim: int, nce_k: int, temperature: float):
        super().__init__(size, feat_dim, nce_k, temperature)
        self.register_buffer("owners", torch.full((size,), -1, dtype=torch.long))  # the image in each slot
        self.register_buffer("head", torch.zeros((), dtype=torch.long))  # the next slot to write

    def select(self, student: Tensor, teacher: Tensor, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch = indices.shape[0]
        if batch > self.rows:
            raise ConfigError(f"distill.queue_size={self.rows} is smaller than the batch ({batch}): raise it")
        slots = (self.head + torch.arange(batch, device=indices.device)) % self.rows
        self.student_memory = self.student_memory.index_copy(0, slots, student)
        self.teacher_memory = self.teacher_memory.index_copy(0, slots, teacher)
        self.owners.index_copy_(0, slots, indices)
        self.head.copy_((self.head + batch) % self.rows)
        others = (self.owners[None, :] != indices[:, None]).float()
        negatives = torch.multinomial(others, self.nce_k, replacement=True, generator=self.generator(others.device))
        return self.student_memory, self.teacher_memory, torch.cat([slots[:, None], negatives], dim=1)


def build_memory(options: ContrastOptions, data: TrainingData) -> ContrastMemory:
    """The queue when options.queue_size > 0, else the bank of data.num_samples rows (a ConfigError if unknown)."""
    if options.queue_size:
        return QueueMemory(options.queue_size, options.feat_dim, options.nce_k, options.nce_t)
    if data.num_samples < 2:
        raise ConfigError(
            f"a contrastive memory bank holds a row per training image, but the training set has "
            f"{data.num_samples or 'an unknown number of'} images: pass num_samples=len(train_set) to "
            "create_distiller (at least 2), or set distill.queue_size > 0"
        )
    if data.labels is not None and len(data.labels) != data.num_samples:
        raise ConfigError(f"{len(data.labels)} training labels for {data.num_samples} training images")
    return SampleMemory(data.num_samples, options.feat_dim, options.nce_k, options.nce_t, options.nce_mom, data.labels)


class ContrastiveDistiller(Distiller):
    """A frozen teacher, the student, an embedding head per side on the pooled vectors, and the memory.

    `forward(images, targets, epoch, indices)` needs each image's position in the training set.
    """

    needs_sample_indices = True

    def __init__(
        self, student: nn.Module, teacher: nn.Module, options: ContrastOptions, data: TrainingData, hidden: int
    ):
        super().__init__(student, teacher)
        self.options = options
        self.embed_student = Embed(feature_info(student).pooled_channels, options.feat_dim, hidden)
        self.embed_teacher = Embed(feature_info(teacher).pooled_channels, options.feat_dim, hidden)
        self.memory = build_memory(options, data)

    def encode(self, images: Tensor) -> tuple[Features, Tensor, Tensor]:
        """The student's features and the student's and teacher's embeddings (B, feat_dim) of `images`."""
        student = self.student_features(images)
        teacher = self.teacher_features(images)
        return student, self.embed_student(student.pooled), self.embed_teacher(teacher.pooled)

    def contrast_loss(self, student: Tensor, teacher: Tensor, indices: Tensor | None) -> Tensor:
        """The memory's NCE loss for the embeddings of the images at `indices`; the memory takes the batch."""
        if indices is None:
            raise ValueError(
                "a contrastive distiller needs each image's position in the training set: "
                "forward(images, targets, epoch, indices)"
            )
        return self.memory(student, teacher, indices)
