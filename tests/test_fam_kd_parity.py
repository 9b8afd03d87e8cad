"""fam_kd equals the published FAM-KD model.

(a) losses and gradient norms precomputed by the published code (tests/fixtures/README_fam_kd.md);
(b) a direct functional oracle (reference_fam_kd.py) on a random published-layout state dict, for
    equal map sizes inside the warm-up and for a heterogeneous pair (resized maps) after it;
(c) `load_official_state` round trips, skips and errors.
All float64, train mode (batch statistics in every BatchNorm but the frozen teacher's).
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import reference_fam_kd as reference
from famkd.distill import create_distiller
from famkd.fam import FrequencyAttention
from famkd.models import create_model
from famkd.weights.published import OfficialStateError, load_official_state, map_official_key

FIXTURE = Path(__file__).parent / "fixtures" / "fam_kd_published_losses.pt"
TOLERANCE = 1e-9

# famkd head key fragment -> published fragment, inside `heads.{i}.` / `atfs.{i}.`.
OFFICIAL_FRAGMENTS = [
    ("fam.global_filter", "conv2.0.weights1"),
    ("fam.gamma1", "conv2.0.rate1"),
    ("fam.gamma2", "conv2.0.rate2"),
    ("fam.local.", "conv2.0.w0."),
    ("bn.", "conv2.1."),
    ("attention.query.", "att_conv.query_conv."),
    ("attention.key.", "att_conv.key_conv."),
    ("attention.value.", "att_conv.value_conv."),
    ("attention.rel_", "att_conv.rel_"),
    ("residual_proj.", "conv1."),
    ("input_proj.", "conv1_x."),
]


def relative_difference(ours: torch.Tensor | float, expected: torch.Tensor | float) -> float:
    ours, expected = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    return ((ours - expected).abs().max() / expected.abs().max()).item()


def official_name(key: str) -> str:
    """Published key of a famkd distiller key (student/teacher keys are shared)."""
    match = re.fullmatch(r"heads\.(\d+)\.(.+)", key)
    if match is None:
        return key
    level, rest = match.groups()
    for ours, official in OFFICIAL_FRAGMENTS:
        if rest.startswith(ours):
            return f"atfs.{level}.{official}{rest[len(ours) :]}"
    raise AssertionError(f"no published name for {key}")


def official_value(key: str, value: torch.Tensor) -> torch.Tensor:
    """A famkd tensor in the published layout: complex filter, rel_h (C/2,1,1,3,1), rel_w (C/2,1,1,1,3)."""
    if key.endswith("global_filter"):
        return torch.view_as_complex(value.contiguous()).clone()
    if key.endswith("rel_h"):
        return value.reshape(value.shape[0], 1, 1, -1, 1).clone()
    if key.endswith("rel_w"):
        return value.reshape(value.shape[0], 1, 1, 1, -1).clone()
    return value.clone()


def official_state(distiller) -> dict[str, torch.Tensor]:
    """The distiller's state as the published code saves it, with the deepest level's unused conv1.*."""
    state = {official_name(k): official_value(k, v) for k, v in distiller.state_dict().items()}
    mid = distiller.heads[0].fam.in_channels
    state["atfs.0.conv1.0.weight"] = torch.randn(mid, 1, 1, 1, dtype=torch.float64)
    for name, tensor in torch.nn.BatchNorm2d(mid).double().state_dict().items():
        state[f"atfs.0.conv1.1.{name}"] = tensor
    return state


# ---------------------------------------------------------------- (a) published fixture


def decode(entry: dict) -> torch.Tensor:
    """A fixture tensor: stored as is, or as integers q times 2**exponent (4-bit q packed in pairs, offset 8)."""
    if "value" in entry:
        return entry["value"].clone()
    q = entry["q"].to(torch.int64)
    if entry["bits"] == 4:
        q = torch.stack([q // 16, q % 16], dim=1).flatten() - 8
    shape = entry["shape"]
    real = q[: math.prod(shape)].to(torch.float64).reshape(shape) * 2.0 ** entry["exponent"]
    return torch.view_as_complex(real) if entry["complex"] else real


@pytest.fixture(scope="module")
def published():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("case", ["default", "mid32_preact"])
def test_losses_and_gradient_norms_equal_the_published_model(published, case):
    spec = published["cases"][case]
    state = {k: decode(e) for k, e in (published["models"] | spec["heads"]).items()}
    assert "atfs.0.conv1.0.weight" in state  # the published dicts carry the deepest level's unused conv1
    distiller = (
        create_distiller(
            "fam_kd",
            student=create_model(published["student"]),
            teacher=create_model(published["teacher"]),
            loss_weight=published["alpha"],
            ce_weight=published["ce_weight"],
            warmup_epochs=published["warmup_epochs"],
            student_preact=spec["student_preact"],
            max_mid_channels=spec["max_mid_channels"],
        )
        .double()
        .train()
    )
    load_official_state(distiller, state)

    images = published["images"].double()
    _, losses = distiller(images, published["targets"], epoch=published["epoch"])
    assert relative_difference(losses["ce"], spec["losses"]["loss_ce"]) <= TOLERANCE
    assert relative_difference(losses["fam_kd"], spec["losses"]["loss_kd"]) <= TOLERANCE

    sum(losses.values()).backward()
    ours = dict(distiller.named_parameters())
    largest = max(spec["grad_norms"].values())
    compared = set()
    for key, norm in spec["grad_norms"].items():
        mapped = map_official_key(key, distiller)  # the unused deepest conv1.* has no gradient, so no norm
        compared.add(mapped)
        our_norm = ours[mapped].grad.norm().item()
        if key.endswith("w0.bias"):
            # A bias right before a train-mode BN has an exact gradient of 0: both sides hold rounding noise.
            assert our_norm <= 1e-12 * largest and norm <= 1e-12 * largest, key
        else:
            assert relative_difference(our_norm, norm) <= TOLERANCE, key
    assert compared == {n for n, p in ours.items() if p.requires_grad}


# ---------------------------------------------------------------- (b) direct oracle


def randomized_official_state(distiller, seed: int) -> dict[str, torch.Tensor]:
    """A published-layout state dict with random values everywhere (student/teacher kept)."""
    generator = torch.Generator().manual_seed(seed)
    state = official_state(distiller)

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)

    for key, value in state.items():
        if not key.startswith("atfs.") or not (value.is_floating_point() or value.is_complex()):
            continue
        if key.endswith("weights1"):
            scale = 1.0 / (value.shape[0] * value.shape[1])
            state[key] = torch.complex(uniform(value.shape, -scale, scale), uniform(value.shape, -scale, scale))
        elif key.endswith(("rate1", "rate2", "running_var")) or (value.dim() == 1 and key.endswith("weight")):
            state[key] = uniform(value.shape, 0.3, 1.5)
        elif value.dim() == 4:
            state[key] = torch.randn(value.shape, generator=generator, dtype=torch.float64) / math.sqrt(value.shape[1])
        else:  # BN biases and running means, rel_h / rel_w, the FAM's local bias
            state[key] = torch.randn(value.shape, generator=generator, dtype=torch.float64) * 0.5
    return state


def deepest_first_levels(features, count: int, preact: bool) -> list[torch.Tensor]:
    stages = features.preact if preact else features.stages
    return [features.pooled[:, :, None, None]] + list(stages[::-1][: count - 1])


# (teacher, student, max_mid_channels, student_preact, epoch). wrn_40_2 -> ShuffleV1 is heterogeneous: the
# student maps (16/8/4) are nearest-resized to the teacher's sides (32/16/8) before each FAM, and its epoch
# 25 is past the warm-up (20 epochs), where the weight is loss_weight x 1. Its heads are capped at 32
# channels: uncapped, its float64 run takes about 8 s and 3 GB.
ORACLE_CASES = [
    ("resnet8", "resnet8", 0, False, 7),
    ("resnet8", "resnet8", 32, True, 7),
    ("wrn_40_2", "ShuffleV1", 32, False, 25),
]


@pytest.mark.parametrize("teacher_name, student_name, max_mid_channels, preact, epoch", ORACLE_CASES)
def test_distiller_equals_the_direct_oracle(teacher_name, student_name, max_mid_channels, preact, epoch):
    torch.manual_seed(1)
    alpha, warmup = 1.5, 20
    distiller = (
        create_distiller(
            "fam_kd",
            student=create_model(student_name),
            teacher=create_model(teacher_name),
            loss_weight=alpha,
            warmup_epochs=warmup,
            student_preact=preact,
            max_mid_channels=max_mid_channels,
        )
        .double()
        .train()
    )
    state = randomized_official_state(distiller, seed=2)
    load_official_state(distiller, state)
    oracle_student = copy.deepcopy(distiller.student)
    leaves = {
        k: v.requires_grad_()
        for k, v in state.items()
        if k.startswith("atfs.") and (v.is_floating_point() or v.is_complex()) and "running" not in k
    }
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([4, 99])

    _, losses = distiller(images, targets, epoch=epoch)
    sum(losses.values()).backward()

    count = len(distiller.heads)
    student_features = oracle_student.forward_features(images)
    with torch.no_grad():
        teacher_features = distiller.teacher.forward_features(images)
    feature_loss = reference.feature_loss(
        deepest_first_levels(student_features, count, preact),
        deepest_first_levels(teacher_features, count, False),
        state,
    )
    ce = F.cross_entropy(student_features.logits, targets)
    oracle_fam_kd = alpha * min(epoch / warmup, 1.0) * feature_loss
    (ce + oracle_fam_kd).backward()

    assert relative_difference(losses["ce"], ce) <= TOLERANCE
    assert relative_difference(losses["fam_kd"], oracle_fam_kd) <= TOLERANCE
    oracle_grads = {f"student.{k}": p.grad for k, p in oracle_student.named_parameters()}
    assert all(v.grad is None for k, v in leaves.items() if k.startswith("atfs.0.conv1."))  # never used
    oracle_grads |= {
        k: torch.view_as_real(v.grad) if v.is_complex() else v.grad
        for k, v in leaves.items()
        if not k.startswith("atfs.0.conv1.")
    }
    largest = max(g.abs().max().item() for g in oracle_grads.values())
    for name, parameter in distiller.named_parameters():
        if not parameter.requires_grad:
            continue
        expected = oracle_grads[official_name(name)].reshape(parameter.shape)
        if name.endswith("fam.local.bias"):  # exact gradient 0 (a train-mode BN follows): compare to the scale
            assert (parameter.grad - expected).abs().max().item() <= TOLERANCE * largest, name
        else:
            assert relative_difference(parameter.grad, expected) <= TOLERANCE, name
    # The BN running statistics moved identically (the oracle updated `state` in place).
    for name, buffer in distiller.named_buffers():
        if name.startswith("heads.") and "running" in name:
            assert relative_difference(buffer, state[official_name(name)]) <= TOLERANCE, name


# ---------------------------------------------------------------- (c) load_official_state


def fam_kd_pair(max_mid_channels: int = 0, seed: int = 0):
    torch.manual_seed(seed)
    return create_distiller(
        "fam_kd", student=create_model("resnet8"), teacher=create_model("resnet8"), max_mid_channels=max_mid_channels
    ).double()


@pytest.mark.parametrize("max_mid_channels", [0, 32])
def test_round_trip_through_the_published_layout(max_mid_channels):
    source = fam_kd_pair(max_mid_channels, seed=0)
    state = official_state(source)
    assert any(".conv1_x." in k for k in state) == (max_mid_channels > 0)
    target = fam_kd_pair(max_mid_channels, seed=1)
    load_official_state(target, state)
    loaded = target.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_a_residual_pooled_level_loads_without_the_published_pooled_fam():
    """The published ImageNet model builds a FAM and BN at the pooled level (atfs.0.conv2.*) whose output is
    never compared with anything; with pooled_level residual famkd has none, and skips those keys."""

    def distiller(seed: int, pooled_level: str):
        torch.manual_seed(seed)
        student, teacher = create_model("resnet8"), create_model("resnet8")
        return create_distiller(
            "fam_kd", student=student, teacher=teacher, max_mid_channels=32, pooled_level=pooled_level
        ).double()

    source = distiller(0, "residual")
    state = {official_name(k): official_value(k, v) for k, v in source.state_dict().items()}
    published_pooled = official_state(distiller(2, "loss"))
    state.update({k: v for k, v in published_pooled.items() if k.startswith("atfs.0.conv2.")})
    assert any(k.startswith("atfs.0.conv2.0.weights1") for k in state) and "atfs.0.conv1_x.0.weight" in state
    target = distiller(1, "residual")
    load_official_state(target, state)
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())
    with pytest.raises(OfficialStateError, match=r"lacks 10 keys, e.g. \[.heads.0.bn.bias"):
        load_official_state(distiller(1, "loss"), {k: v for k, v in state.items() if not k.startswith("atfs.0.conv2")})


def test_module_prefixed_state_loads():
    source = fam_kd_pair(seed=0)
    target = fam_kd_pair(seed=1)
    load_official_state(target, {f"module.{k}": v for k, v in official_state(source).items()})
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())


@pytest.mark.parametrize("unknown", ["atfs.1.conv3.weight", "atfs.2.conv2.0.weights2", "classifier.weight"])
def test_unknown_key_is_an_error_naming_it(unknown):
    source = fam_kd_pair()
    state = official_state(source)
    state[unknown] = torch.zeros(1)
    with pytest.raises(OfficialStateError, match=re.escape(repr(unknown))):
        load_official_state(fam_kd_pair(seed=1), state)


def test_lone_frequency_attention_loads_and_computes_the_published_formula():
    generator = torch.Generator().manual_seed(3)
    c_in, c_out, size = 3, 5, 32
    state = {
        "weights1": torch.complex(
            torch.rand(c_in, c_out, size, size, generator=generator, dtype=torch.float64),
            torch.rand(c_in, c_out, size, size, generator=generator, dtype=torch.float64),
        ),
        "rate1": torch.tensor([0.7], dtype=torch.float64),
        "rate2": torch.tensor([1.3], dtype=torch.float64),
        "w0.weight": torch.randn(c_out, c_in, 1, 1, generator=generator, dtype=torch.float64),
        "w0.bias": torch.randn(c_out, generator=generator, dtype=torch.float64),
    }
    module = FrequencyAttention(c_in, c_out, size).double()
    load_official_state(module, state)
    assert torch.equal(module.kernel, state["weights1"])
    assert torch.equal(module.gamma1, state["rate1"]) and torch.equal(module.gamma2, state["rate2"])
    assert torch.equal(module.local.weight, state["w0.weight"]) and torch.equal(module.local.bias, state["w0.bias"])
    x = torch.randn(2, c_in, size, size, generator=generator, dtype=torch.float64)
    expected = reference.fam(x, {f"conv2.0.{k}": v for k, v in state.items()}, "conv2.0.")
    assert relative_difference(module(x), expected) <= TOLERANCE
