"""The CIFAR-100 zoo against the community zoo's recorded layout (tests/fixtures/cifar_zoo.json).

The fixture was produced from the community model definitions (see tests/fixtures/README.md): per
model, every state-dict key with its shape, the parameter count, the shapes of feats[1:],
preact_feats[1:], pooled_feat and logits for a (2, 3, 32, 32) input, and float64 checksums of
those tensors with seeded weights (`fill_seeded_weights`) in training mode.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famkd.models import FeatureModel, Features, create_model, list_models
from real_data import REAL_CIFAR100, REAL_CIFAR100_WHERE, RESNET56_TEACHER, TEACHERS_WHERE

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "cifar_zoo.json").read_text())["models"]
MODEL_NAMES = [
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "ResNet50",
]
# the normalisation the community teachers were trained with: mdistiller's mdistiller/dataset/cifar100.py and
# RepDistiller's dataset/cifar100.py (transforms.Normalize there)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


@pytest.fixture(autouse=True, scope="module")
def single_thread_and_cached_models():
    """One thread: batches of 2 are dominated by per-op threading overhead, which on a shared
    2-core machine makes two threads ~10x slower. Afterwards the thread count is restored and the
    cached models (~400 MB) are released."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    seeded_model.cache_clear()
    seeded_run.cache_clear()


def fill_seeded_weights(model: nn.Module) -> None:
    """Overwrite every parameter with values seeded by its name (crc32), independent of init order.

    Weights of rank >= 2: normal, std sqrt(2 / fan_in); 1-D weights (BN scales): 1 + normal with std
    0.1; biases: normal, std 0.1.
    """
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            if parameter.dim() > 1:
                parameter.copy_(noise * math.sqrt(2.0 / parameter[0].numel()))
            elif name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                parameter.copy_(0.1 * noise)


def checksum(tensor: Tensor) -> list[float]:
    """[mean, root mean square, mean weighted by linspace(-1, 1) over the contiguous NCHW order].

    The weighted term changes when elements move, so a wrong channel order is caught too.
    """
    flat = tensor.detach().double().contiguous().flatten()
    position = torch.linspace(-1.0, 1.0, flat.numel(), dtype=torch.float64)
    return [flat.mean().item(), flat.square().mean().sqrt().item(), (flat * position).mean().item()]


def seeded_input(dtype: torch.dtype = torch.float32) -> Tensor:
    """(2, 3, 32, 32), drawn in float64 then cast (randn draws differ between dtypes)."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)


@cache
def seeded_model(name: str) -> FeatureModel:
    """One float32 model per name with `fill_seeded_weights`, in training mode (batch-statistics BN)."""
    model = create_model(name, num_classes=100)
    fill_seeded_weights(model)
    return model.train()


@cache
def seeded_run(name: str) -> tuple[Features, Tensor]:
    """forward_features and forward of the seeded model on `seeded_input()`."""
    model, x = seeded_model(name), seeded_input()
    with torch.no_grad():
        return model.forward_features(x), model(x)


def shapes(tensors: list[Tensor]) -> list[list[int]]:
    return [list(t.shape) for t in tensors]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_zoo_model_is_registered_and_recorded():
    assert sorted(FIXTURE) == sorted(MODEL_NAMES)
    assert set(MODEL_NAMES) <= set(list_models())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_keys_and_shapes_equal_the_community_zoo(name):
    ours = {key: list(value.shape) for key, value in seeded_model(name).state_dict().items()}
    expected = FIXTURE[name]["state_dict"]
    assert sorted(set(ours) - set(expected)) == [], "keys the community zoo does not have"
    assert sorted(set(expected) - set(ours)) == [], "community keys we lack"
    assert ours == expected


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count(name):
    assert parameter_count(seeded_model(name)) == FIXTURE[name]["num_parameters"]


def test_published_parameter_counts():
    assert parameter_count(seeded_model("resnet8x4")) == 1_233_540
    assert parameter_count(seeded_model("resnet20")) == 278_324


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_feature_shapes(name):
    features, expected = seeded_run(name)[0], FIXTURE[name]
    assert shapes(features.stages) == expected["feats"]
    # the community MobileNetV2 has no preact_feats: its stages end at a linear BN
    assert shapes(features.preact) == (expected["preact_feats"] or expected["feats"])
    assert list(features.pooled.shape) == expected["pooled_feat"]
    assert list(features.logits.shape) == expected["logits"]


def assert_checksums_close(actual: list[float], expected: list[float], what: str) -> None:
    """Each entry within 3e-5 of the tensor's scale: float32 here against the float64 reference
    (measured worst case 1.5e-6); a moved channel shifts the weighted entry by ~1e-3 of the scale."""
    scale = max(abs(expected[0]), expected[1])
    for a, e in zip(actual, expected):
        assert abs(a - e) <= 3e-5 * scale, f"{what}: {actual} != {expected}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_seeded_forward_matches_the_community_checksums(name):
    features, expected = seeded_run(name)[0], FIXTURE[name]["checksums"]
    expected_preact = expected["preact_feats"] or expected["feats"]
    assert len(features.stages) == len(expected["feats"]) and len(features.preact) == len(expected_preact)
    for index, (stage, checks) in enumerate(zip(features.stages, expected["feats"])):
        assert_checksums_close(checksum(stage), checks, f"stage {index}")
    for index, (preact, checks) in enumerate(zip(features.preact, expected_preact)):
        assert_checksums_close(checksum(preact), checks, f"preact {index}")
    assert_checksums_close(checksum(features.pooled), expected["pooled_feat"], "pooled")
    assert_checksums_close(checksum(features.logits), expected["logits"], "logits")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_feature_info_describes_the_actual_taps(name):
    info, features = seeded_model(name).feature_info, seeded_run(name)[0]
    assert len(info.stages) == len(features.stages) == len(features.preact)
    for stage, tap in zip(info.stages, features.stages):
        assert tap.shape[1] == stage.channels, stage.name
        assert tap.shape[2] == tap.shape[3] == stage.spatial_size(32) == 32 // stage.stride, stage.name
    assert [stage.spatial_size(32) for stage in info.stages] == [tap.shape[-1] for tap in features.stages]
    assert info.pooled_channels == features.pooled.shape[1]
    assert len({stage.name for stage in info.stages}) == len(info.stages)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_returns_the_feature_logits(name):
    features, logits = seeded_run(name)
    assert torch.equal(logits, features.logits)


RELU_ENDED = [name for name in MODEL_NAMES if not name.startswith("wrn") and name != "MobileNetV2"]


@pytest.mark.parametrize("name", RELU_ENDED)
def test_preact_is_kept_before_the_activation(name):
    """stage == relu(preact) (ShuffleV2: then channel-shuffled); an in-place ReLU would leave no
    negative values in preact."""
    features = seeded_run(name)[0]
    for stage, preact in zip(features.stages, features.preact):
        activated = F.relu(preact)
        if name == "ShuffleV2":  # interleave the two halves: channel k of half g -> 2k + g
            activated = activated.unflatten(1, (2, -1)).transpose(1, 2).flatten(1, 2)
        assert preact.min() < 0
        assert torch.equal(stage, activated)


@pytest.mark.parametrize("name", ["wrn_16_1", "wrn_40_2"])
def test_wrn_preact_is_the_following_bn(name):
    model, features = seeded_model(name), seeded_run(name)[0]
    following_bns = [model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1]
    with torch.no_grad():
        for bn, stage, preact in zip(following_bns, features.stages, features.preact):
            assert torch.equal(preact, bn(stage))
            assert preact.min() < 0


def test_mobilenetv2_preact_is_the_stage_itself():
    features = seeded_run("MobileNetV2")[0]
    assert all(p is s for p, s in zip(features.preact, features.stages))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_community_checkpoint_format_round_trip(name):
    """{"model": state_dict} through torch.save / torch.load(weights_only=True) into a fresh model.

    The source has seeded weights and running statistics moved by its training-mode pass.
    """
    seeded_run(name)  # its training-mode pass has moved the running statistics
    source = seeded_model(name)
    buffer = io.BytesIO()
    torch.save({"model": source.state_dict(), "epoch": 240}, buffer)
    buffer.seek(0)
    target = create_model(name, num_classes=100)
    target.load_state_dict(torch.load(buffer, weights_only=True)["model"], strict=True)
    loaded, saved = target.state_dict(), source.state_dict()
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)


def test_num_classes_is_validated():
    assert create_model("resnet8", num_classes=10).fc.out_features == 10
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet8", num_classes=0)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(KeyError, match="resnet8x4"):
        create_model("resnet8x")


@pytest.mark.skipif(not RESNET56_TEACHER.exists(), reason=f"no resnet56.pth in {TEACHERS_WHERE}")
def test_shared_resnet56_teacher_loads_strictly():
    checkpoint = torch.load(RESNET56_TEACHER, map_location="cpu", weights_only=True)
    create_model("resnet56").load_state_dict(checkpoint["model"], strict=True)


@pytest.mark.skipif(
    not (RESNET56_TEACHER.exists() and (REAL_CIFAR100 / "test_images_0.npy").exists()),
    reason=f"needs resnet56.pth in {TEACHERS_WHERE} and CIFAR-100 in {REAL_CIFAR100_WHERE}",
)
def test_shared_resnet56_teacher_classifies_real_test_images():
    """200 real test images: the teacher reaches 69% on all 10,000; a wrong forward gives ~1%."""
    model = create_model("resnet56")
    model.load_state_dict(torch.load(RESNET56_TEACHER, map_location="cpu", weights_only=True)["model"])
    images = np.load(REAL_CIFAR100 / "test_images_0.npy", mmap_mode="r")[:200]
    labels = torch.from_numpy(np.load(REAL_CIFAR100 / "test_fine_labels.npy")[:200])
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        accuracy = (model.eval()(x).argmax(1) == labels).double().mean().item()
    assert accuracy > 0.55
