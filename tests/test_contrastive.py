"""CRD and WCoRD (docs/method.md): memories, negatives, the NCE loss and Sinkhorn against independent
references, every paper pair, and an exact mid-epoch resume."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F

import famkd.distill.crd  # noqa: F401  (registers crd)
import famkd.distill.wcord  # noqa: F401  (registers wcord)
from famkd.classification import task as task_module
from famkd.classification import train
from famkd.config import load_config
from famkd.distill import create_distiller, list_options
from famkd.distill.contrastive import QueueMemory, SampleMemory, draw_other_classes, draw_others, nce_loss
from famkd.distill.wcord import sinkhorn_cost
from famkd.engine.run_log import read_metrics
from famkd.errors import ConfigError, TrainingInterrupted
from famkd.models import create_model
from famkd.recipes import CIFAR_PAIRS
from famkd.weights import load_checkpoint
from tiny_cifar import tiny_datasets

METHODS = ("crd", "wcord")
TIMING_KEYS = {"epoch_time_s", "images_per_s", "data_wait_fraction"}


def build(method, teacher="resnet8", student="resnet8", num_classes=10, **options):
    torch.manual_seed(0)
    return create_distiller(
        method,
        student=create_model(student, num_classes=num_classes),
        teacher=create_model(teacher, num_classes=num_classes),
        **options,
    )


def published_nce(probs, noise_size):
    """RepDistiller's ContrastLoss (crd/criterion.py), transcribed: P (B, 1 + K) with the positive first."""
    negatives, eps = probs.shape[1] - 1, 1e-7
    noise = negatives * (1.0 / noise_size)
    log_d1 = torch.log(probs[:, 0] / (probs[:, 0] + noise + eps))
    log_d0 = torch.log(torch.full_like(probs[:, 1:], noise) / (probs[:, 1:] + noise + eps))
    return -(log_d1.sum(0) + log_d0.reshape(-1, 1).sum(0)) / probs.shape[0]


def normalised(x):
    return x / x.pow(2).sum(1, keepdim=True).sqrt()


# ---- options -------------------------------------------------------------------------------


def test_defaults_are_the_published_ones_and_bad_values_fail_when_options_resolve():
    crd = {"loss_weight": 0.8, "ce_weight": 1.0, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_mom": 0.5}
    assert list_options("crd") == {**crd, "queue_size": 0}
    wcord = {"local_weight": 0.8, "sinkhorn_epsilon": 0.05, "sinkhorn_iterations": 50, "critic_hidden": 0}
    assert list_options("wcord") == {**crd, "queue_size": 0, **wcord}
    with pytest.raises(ConfigError, match=r"distill.nce_mom=1.0 is too large: it must be < 1"):
        load_config(None, ["method=crd", "distill.nce_mom=1"])
    with pytest.raises(ConfigError, match=r"distill.queue_size=1 is too small"):
        load_config(None, ["method=wcord", "distill.queue_size=1"])


def test_a_memory_bank_needs_the_training_set_size_and_the_forward_the_indices():
    with pytest.raises(ConfigError, match="training set has an unknown number of images: pass num_samples="):
        build("crd")
    build("crd", queue_size=64)  # a queue does not depend on the training-set size
    distiller = build("wcord", num_samples=20, nce_k=4)
    with pytest.raises(ValueError, match=r"forward\(images, targets, epoch, indices\)"):
        distiller(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), 1)
    queued = build("crd", queue_size=2, nce_k=4)
    with pytest.raises(ConfigError, match=r"distill.queue_size=2 is smaller than the batch \(3\)"):
        queued(torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2]), 1, torch.tensor([0, 1, 2]))


# ---- memories and negatives ----------------------------------------------------------------


def test_memories_start_uniform_within_the_published_bound():
    memory = build("crd", num_samples=4000, feat_dim=48).memory
    stdv = 1 / math.sqrt(48 / 3)
    for rows in (memory.student_memory, memory.teacher_memory):
        assert rows.shape == (4000, 48) and rows.abs().max() <= stdv
        assert rows.max() > 0.99 * stdv and rows.min() < -0.99 * stdv and abs(rows.mean()) < 0.01 * stdv
    assert not torch.equal(memory.student_memory, memory.teacher_memory)


def test_negatives_are_never_the_sample_itself_and_every_other_index_is_drawn_evenly():
    torch.manual_seed(0)
    size, draws = 10, 500
    positives = torch.arange(size).repeat(20)  # every sample 20 times: 10000 draws per sample
    drawn = draw_others(positives, size, draws)
    assert drawn.shape == (len(positives), draws)
    for sample in range(size):
        values = drawn[positives == sample].flatten()
        assert (values != sample).all()
        counts = torch.bincount(values, minlength=size).float()
        others = torch.arange(size) != sample
        expected = values.numel() / (size - 1)
        assert (
            counts[others] - expected
        ).abs().max() < 0.15 * expected  # 5 standard deviations: sqrt(n p (1 - p)) = 31


def test_one_step_changes_exactly_the_batch_rows_to_the_momentum_update():
    momentum = 0.3  # not 0.5, so that swapping momentum and 1 - momentum shows
    distiller = build("crd", num_samples=20, nce_k=16, nce_mom=momentum).train()
    memory = distiller.memory
    before = {"student": memory.student_memory.double(), "teacher": memory.teacher_memory.double()}
    embeddings = {}
    distiller.embed_student.register_forward_hook(lambda m, i, out: embeddings.__setitem__("student", out.double()))
    distiller.embed_teacher.register_forward_hook(lambda m, i, out: embeddings.__setitem__("teacher", out.double()))
    indices = torch.tensor([3, 7, 11, 19])
    distiller(torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4]), 1, indices)
    for embedding in embeddings.values():  # CRD's embeddings are L2-normalised
        torch.testing.assert_close(embedding.norm(dim=1), torch.ones(4, dtype=torch.float64))
    after = {"student": memory.student_memory.double(), "teacher": memory.teacher_memory.double()}
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[indices] = False
    for side in ("student", "teacher"):
        assert torch.equal(after[side][untouched], before[side][untouched])
        expected = normalised(momentum * before[side][indices] + (1 - momentum) * embeddings[side].detach())
        torch.testing.assert_close(after[side][indices], expected, rtol=0, atol=1e-6)


def test_queue_is_a_fifo_whose_negatives_never_hold_the_sample_itself():
    torch.manual_seed(0)
    size, draws = 8, 500
    queue = QueueMemory(size, feat_dim=8, nce_k=draws, temperature=0.07)
    written = []
    for batch in ([0, 1, 2, 3], [4, 0, 5, 6], [7, 0, 1, 9]):  # sample 0 is queued twice when the last is drawn
        indices = torch.tensor(batch)
        student, teacher = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
        written += list(zip(batch, student, teacher))
        student_memory, teacher_memory, rows = queue.select(student, teacher, indices)
    last = written[-size:]  # the FIFO keeps the last `size` embeddings, write k in slot k mod size
    slots = [(len(written) - size + k) % size for k in range(size)]
    assert queue.owners[slots].tolist() == [sample for sample, _, _ in last]
    assert int(queue.head) == len(written) % size
    for slot, (_, student, teacher) in zip(slots, last):
        assert torch.equal(student_memory[slot], student) and torch.equal(teacher_memory[slot], teacher)
    assert rows[:, 0].tolist() == [0, 1, 2, 3]  # each positive is the slot just written
    assert (queue.owners == 0).sum() == 2
    for sample, row in zip([7, 0, 1, 9], rows):
        allowed = {slot for slot in range(size) if queue.owners[slot] != sample}
        assert set(row[1:].tolist()) == allowed  # every other slot is drawn, none holding the sample


# ---- the NCE loss and Z --------------------------------------------------------------------


def test_nce_loss_equals_the_published_formula():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(5, 1 + 30, generator=generator, dtype=torch.float64) * 2 - 1  # cosines
    temperature, noise_size = 0.07, 1000
    z = torch.exp(scores / temperature).mean() * noise_size
    probs = torch.exp(scores / temperature) / z
    expected = published_nce(probs, noise_size)
    actual = nce_loss(torch.log(probs), noise_size)
    torch.testing.assert_close(actual, expected.squeeze(), rtol=1e-12, atol=0)


def test_contrasts_score_the_memories_before_their_update_with_z_from_the_first_batch():
    """The student's embedding against the teacher memory and the teacher's against the student memory, at the
    rows drawn (own row first), P = exp(score / T) / Z, Z = rows * mean(exp(score / T)) over the first batch."""
    torch.manual_seed(0)
    rows, temperature = 30, 0.07
    memory = SampleMemory(rows, feat_dim=8, nce_k=12, temperature=temperature, momentum=0.5)
    drawn = []
    select = memory.select

    def recording_select(*args):
        result = select(*args)
        drawn.append(result[-1])  # the rows: own row first, then the negatives
        return result

    memory.select = recording_select
    z_first = None
    for indices in (torch.tensor([0, 5, 9, 29]), torch.tensor([1, 5, 8, 20])):
        student, teacher = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
        memories = {"student": memory.student_memory.double(), "teacher": memory.teacher_memory.double()}
        loss = memory(student, teacher, indices)
        contrast = drawn[-1]
        assert (contrast[:, 0] == indices).all() and (contrast[:, 1:] != indices[:, None]).all()
        scores = [
            torch.stack([anchor.double()[b] @ memories[other][contrast[b]].T for b in range(4)])
            for anchor, other in ((student, "teacher"), (teacher, "student"))
        ]
        if z_first is None:
            z_first = [torch.exp(s / temperature).mean() * rows for s in scores]
        expected = sum(published_nce(torch.exp(s / temperature) / z, rows).squeeze() for s, z in zip(scores, z_first))
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
        torch.testing.assert_close(memory.normalizers.double(), torch.stack(z_first), rtol=1e-6, atol=0)


# ---- WCoRD's local term --------------------------------------------------------------------


def test_sinkhorn_cost_converges_to_the_exact_transport_cost():
    """Exact OT between two uniform 4-point measures: by Birkhoff's theorem a permutation plan is optimal.
    The entropic plan's cost lies in [W, W + eps * log n]: the entropy of a plan with uniform marginals lies
    in [log n, 2 log n], and a permutation plan's is log n."""
    n = 4
    cost = torch.rand(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = min(sum(cost[i, p[i]] for i in range(n)) / n for p in itertools.permutations(range(n)))
    assert exact < cost.mean() - 0.1  # the independent plan is far from optimal here
    errors = []
    for epsilon in (1.0, 0.3, 0.1, 0.03, 0.01, 0.003):
        error = float(sinkhorn_cost(cost, epsilon, iterations=1000) - exact)
        assert -1e-9 <= error <= epsilon * math.log(n) + 1e-9, epsilon
        errors.append(error)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3


def test_sinkhorn_cost_is_differentiable():
    cost = torch.rand(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: sinkhorn_cost(c, 0.2, 30), (cost,))


def test_wcord_local_term_is_the_sinkhorn_cost_of_the_embeddings():
    distiller = build("wcord", num_samples=20, nce_k=8, local_weight=0.5, sinkhorn_epsilon=0.1, sinkhorn_iterations=20)
    embeddings = {}
    distiller.embed_student.register_forward_hook(lambda m, i, out: embeddings.__setitem__("student", out.detach()))
    distiller.embed_teacher.register_forward_hook(lambda m, i, out: embeddings.__setitem__("teacher", out.detach()))
    _, losses = distiller(torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4]), 1, torch.tensor([0, 4, 8, 12]))
    cost = 1 - embeddings["teacher"].double() @ embeddings["student"].double().T
    torch.testing.assert_close(losses["wcord_local"].double(), 0.5 * sinkhorn_cost(cost, 0.1, 20), rtol=1e-5, atol=0)
    assert set(losses) == {"ce", "wcord_global", "wcord_local"}


# ---- every pair, mixed precision -----------------------------------------------------------


@pytest.mark.parametrize("pair", CIFAR_PAIRS, ids=lambda p: p.name)
def test_pair_builds_steps_and_every_head_parameter_gets_a_gradient(pair):
    for method in METHODS:
        distiller = build(method, pair.teacher, pair.student, num_classes=100, num_samples=100, nce_k=32).train()
        teacher_state = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
        assert distiller.needs_sample_indices
        assert distiller.embed_student.layers[0].in_features == distiller.student.feature_info.pooled_channels
        assert distiller.embed_teacher.layers[0].in_features == distiller.teacher.feature_info.pooled_channels
        logits, losses = distiller(torch.randn(2, 3, 32, 32), torch.tensor([3, 7]), 1, torch.tensor([5, 99]))
        assert logits.shape == (2, 100)
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), method
        sum(losses.values()).backward()
        heads = dict(distiller.named_parameters())
        heads = {n: p for n, p in heads.items() if not n.startswith(("student.", "teacher."))}
        assert heads and all(p.grad is not None and torch.isfinite(p.grad).all() for p in heads.values()), method
        assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())
        assert not distiller.teacher.training
        assert all(torch.equal(v, teacher_state[k]) for k, v in distiller.teacher.state_dict().items())


@pytest.mark.parametrize("method", METHODS)
def test_bf16_autocast_keeps_the_contrast_and_memories_in_float32(method):
    distiller = build(method, num_samples=20, nce_k=8).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = distiller(torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4]), 1, torch.tensor([0, 4, 8, 12]))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for k, v in losses.items() if k != "ce")
    assert distiller.memory.student_memory.dtype == distiller.memory.teacher_memory.dtype == torch.float32


# ---- exact resume --------------------------------------------------------------------------


@pytest.mark.parametrize("queue_size", [0, 16])
def test_crd_resumed_mid_epoch_ends_exactly_like_the_uninterrupted_run(tmp_path, monkeypatch, queue_size):
    monkeypatch.setattr(task_module, "build_datasets", lambda data_cfg: tiny_datasets())
    torch.manual_seed(1)
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, teacher)

    def config(run_dir):
        return load_config(
            None,
            [
                "method=crd",
                "student=resnet8",
                "teacher.name=resnet8",
                f"teacher.checkpoint={teacher}",
                "device=cpu",
                "run.tensorboard=false",
                "run.deterministic=true",
                f"run.dir={run_dir}",
                "train.epochs=2",
                "train.batch_size=8",
                "train.max_steps_per_epoch=3",
                "train.lr_milestones=[1]",
                "train.log_interval=2",
                "distill.nce_k=64",
                f"distill.queue_size={queue_size}",
            ],
        )

    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    train(config(uninterrupted))

    def press_ctrl_c(epoch, step, global_step):
        if global_step == 2:  # mid epoch 1 (3 steps an epoch)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(config(interrupted), on_step=press_ctrl_c)
    saved = load_checkpoint(interrupted / "checkpoints" / "last.pt")
    assert saved["partial_period"]["steps_done"] == 2 and saved["global_step"] == 2
    assert (saved["heads"]["memory.normalizers"] > 0).all()  # Z was set by the first batch and is saved
    train(None, interrupted)

    def metrics(run_dir):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run_dir)]

    assert metrics(interrupted) == metrics(uninterrupted) and len(metrics(uninterrupted)) == 2
    resumed, reference = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (interrupted, uninterrupted))
    for part in ("student", "heads"):
        assert resumed[part].keys() == reference[part].keys()
        assert all(torch.equal(resumed[part][k], reference[part][k]) for k in reference[part]), part
    assert {"memory.student_memory", "memory.teacher_memory", "memory.normalizers"} <= reference["heads"].keys()
    summaries = [json.loads((d / "summary.json").read_text()) for d in (interrupted, uninterrupted)]
    for key in ("best_acc", "last_acc", "best_epoch", "epochs_completed", "teacher_acc", "status"):
        assert summaries[0][key] == summaries[1][key]


def test_with_the_training_labels_negatives_are_distinct_images_of_other_classes():
    """RepDistiller's `exact` sampling: nce_k distinct images whose class differs from the sample's."""
    torch.manual_seed(0)
    labels = torch.arange(40) % 4  # 4 classes of 10 images: 30 images of other classes per sample
    positives = torch.tensor([0, 5, 10, 39]).repeat(250)  # classes 0, 1, 2, 3, each 250 times
    drawn = draw_other_classes(positives, labels, 20)
    assert drawn.shape == (1000, 20)
    assert (labels[drawn] != labels[positives][:, None]).all()
    assert all(len(set(row.tolist())) == 20 for row in drawn)  # without replacement
    for sample in (0, 5, 10, 39):
        counts = torch.bincount(drawn[positives == sample].flatten(), minlength=40).float()
        others = labels != labels[sample]
        expected = 250 * 20 / 30  # each other-class image in 2/3 of the rows
        assert (counts[~others] == 0).all() and (counts[others] - expected).abs().max() < 0.15 * expected
    every_other = draw_other_classes(torch.tensor([3]), labels, 30)  # asks for all of them: each exactly once
    assert sorted(every_other[0].tolist()) == [i for i in range(40) if i % 4 != 3]
    too_many = draw_other_classes(torch.tensor([3]), labels, 45)  # more than exist: with replacement
    assert too_many.shape == (1, 45) and (labels[too_many] != 3).all()


def test_the_bank_draws_other_class_negatives_when_it_knows_the_labels(monkeypatch):
    labels = torch.arange(50) % 5
    distiller = build("crd", num_samples=50, nce_k=16, labels=labels).train()
    seen = []
    plain = distiller.memory.negatives
    monkeypatch.setattr(
        distiller.memory, "negatives", lambda indices: seen.append((indices, plain(indices))) or seen[-1][1]
    )
    indices = torch.tensor([0, 1, 2, 3])
    distiller(torch.randn(4, 3, 32, 32), labels[indices], 1, indices)
    ((used, negatives),) = seen
    assert torch.equal(used, indices) and negatives.shape == (4, 16)
    assert (labels[negatives] != labels[indices][:, None]).all()
    assert "memory.labels" not in distiller.state_dict()  # the data brings them on every run, not the checkpoint
    with pytest.raises(ConfigError, match="49 training labels for 50 training images"):
        build("crd", num_samples=50, labels=labels[:49])
