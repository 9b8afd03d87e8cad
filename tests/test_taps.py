"""Models outside the zoo: taps of any nn.Module (famkd.models.taps), timm: and torchvision: names, their weights.

References: each tap is checked against the tensor computed by hand from the module's own pieces, torchvision's
ResNet found automatically against the zoo's resnet18 with its taps named (the same weights; test_imagenet checks
those against a hand-written forward), and timm's ViT and Swin against timm's own
`forward_intermediates(output_fmt="NCHW")`.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from famkd.distill import create_distiller, list_distillers
from famkd.errors import ConfigError, FamkdError
from famkd.models import attach_taps, create_model, feature_info, forward_features
from famkd.weights.zoo import load_student_init, model_from_checkpoint

timm = pytest.importorskip("timm", reason="the timm extra is part of the test extra")


class Block(nn.Module):
    """conv-bn-relu, conv-bn, + shortcut, then a ReLU module (so the block has a pre-activation)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += self.shortcut(x)
        return self.relu(out)


class Net(nn.Module):
    """A plain classifier of no zoo: stem, three stages at sides s, s/2, s/4, a functional flatten, a head."""

    def __init__(self, classes: int = 3, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(Block(width, width, 1))
        self.stage2 = Block(width, 2 * width, 2)
        self.stage3 = Block(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def block_by_hand(block: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, pre-activation) of a Block, computed from its pieces."""
    hidden = F.relu(block.bn1(block.conv1(x)))
    preact = block.bn2(block.conv2(hidden)) + block.shortcut(x)
    return F.relu(preact), preact


def trained_mode_net(seed: int = 0, width: int = 8) -> Net:
    torch.manual_seed(seed)
    net = Net(width=width)
    for module in net.modules():  # BN statistics that are not the identity, so a mix-up would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_automatic_taps_of_a_plain_module_are_the_stage_outputs_with_their_pre_activations():
    net = trained_mode_net()
    reader = attach_taps(net, 32)
    info = feature_info(net)
    assert [s.name for s in info.stages] == ["stage1", "stage2", "stage3"]
    assert [(s.channels, s.stride) for s in info.stages] == [(8, 1), (16, 2), (32, 4)]
    assert info.pooled_channels == 32 and reader.label == "Net"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = forward_features(net, x)
        stem = net.stem(x)
        out1, pre1 = block_by_hand(net.stage1[0], stem)
        out2, pre2 = block_by_hand(net.stage2, out1)
        out3, pre3 = block_by_hand(net.stage3, out2)
        pooled = out3.mean((2, 3))
    for got, want in zip(features.stages + features.preact, [out1, out2, out3, pre1, pre2, pre3]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(features.pooled, pooled, rtol=0, atol=1e-5)
    torch.testing.assert_close(features.logits, net.fc(pooled), rtol=0, atol=1e-5)


def test_taps_given_by_path_are_read_there():
    net = trained_mode_net()
    attach_taps(net, 32, taps=["stem", "stage2.bn1"])
    assert [(s.name, s.channels, s.stride) for s in feature_info(net).stages] == [("stem", 8, 1), ("stage2.bn1", 16, 2)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = forward_features(net, x)
        stem = net.stem(x)
        torch.testing.assert_close(features.stages[0], stem)
        # the stem ends in a ReLU module: its pre-activation is the BN output
        torch.testing.assert_close(features.preact[0], net.stem[1](net.stem[0](x)))
        torch.testing.assert_close(features.stages[1], net.stage2.bn1(net.stage2.conv1(net.stage1(stem))))


class FunctionalNet(nn.Module):
    """Stages whose activation is a function call: the map crossing into the next stage is no module's output."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def test_a_map_made_by_a_function_is_tapped_at_the_input_of_the_module_that_reads_it():
    torch.manual_seed(0)
    net = FunctionalNet()
    attach_taps(net, 16)
    assert [(s.name, s.channels, s.stride) for s in feature_info(net).stages] == [
        ("conv2:input", 8, 1),
        ("conv2", 16, 2),
    ]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = forward_features(net, x)
        torch.testing.assert_close(features.stages[0], F.relu(net.conv1(x)))
        # the last map is read where a module gives it: conv2's output, before the functional ReLU
        torch.testing.assert_close(features.stages[1], net.conv2(F.relu(net.conv1(x))))


def test_torchvision_resnet18_taps_equal_the_zoo_resnet18_in_both_modes():
    torch.manual_seed(0)
    zoo = create_model("resnet18", num_classes=10)
    hooked = create_model("torchvision:resnet18", num_classes=10, image_size=64)
    hooked.load_state_dict(zoo.state_dict())
    assert [s.name for s in feature_info(hooked).stages] == ["layer1", "layer2", "layer3", "layer4"]
    assert (
        feature_info(hooked).stages == tuple(type(s)(s.name, s.channels, s.stride) for s in zoo.feature_info.stages)
        and feature_info(hooked).pooled_channels == zoo.feature_info.pooled_channels
    )
    x = torch.randn(2, 3, 64, 64)
    for training in (True, False):
        zoo.train(training)
        hooked.train(training)
        want, got = zoo.forward_features(x), forward_features(hooked, x)
        for a, b in zip(
            want.stages + want.preact + [want.pooled, want.logits], got.stages + got.preact + [got.pooled, got.logits]
        ):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name, size", [("vit_tiny_patch16_224", 64), ("swin_tiny_patch4_window7_224", 224)])
def test_timm_token_and_channels_last_maps_equal_forward_intermediates(name, size):
    torch.manual_seed(0)
    model = create_model(f"timm:{name}", num_classes=5, image_size=size).eval()
    stages = feature_info(model).stages
    blocks = [int(s.name.rsplit(".", 1)[1]) for s in stages]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        features = forward_features(model, x)
        final, intermediates = model.forward_intermediates(x, indices=blocks, output_fmt="NCHW")
        pooled = model.forward_head(final, pre_logits=True)
    if name.startswith("vit"):
        assert blocks == [2, 5, 8, 11]  # four evenly spaced of twelve blocks
    for got, want in zip(features.stages, intermediates):
        assert got.shape == want.shape and torch.equal(got, want)
    assert torch.equal(features.pooled, pooled) and torch.equal(features.logits, model.get_classifier()(pooled))


def trainable_without_grad(distiller) -> list[str]:
    return [n for n, p in distiller.named_parameters() if p.requires_grad and p.grad is None]


def fam_kd_step(student, teacher, size, **taps):
    distiller = create_distiller("fam_kd", student=student, teacher=teacher, image_size=size, **taps).train()
    logits, losses = distiller(torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 0]), 1)
    sum(losses.values()).backward()
    assert logits.shape == (4, 3) and all(torch.isfinite(v) for v in losses.values())
    return distiller


@pytest.mark.parametrize(
    "teacher, student",
    [
        ("timm:vit_tiny_patch16_224", "timm:resnet10t"),
        ("timm:resnet10t", "timm:vit_tiny_patch16_224"),
        ("torchvision:resnet18", "torchvision:mobilenet_v3_small"),
    ],
)
def test_a_fam_kd_step_trains_every_parameter_of_heterogeneous_pairs(teacher, student):
    torch.manual_seed(0)
    pair = {role: create_model(name, num_classes=3, image_size=64) for role, name in (("t", teacher), ("s", student))}
    distiller = fam_kd_step(pair["s"], pair["t"], 64)
    assert trainable_without_grad(distiller) == []
    assert len(distiller.heads) == 1 + min(len(feature_info(m).stages) for m in pair.values())
    assert all(p.grad is None for p in distiller.teacher.parameters())


def test_plain_modules_distil_through_the_python_api_with_automatic_and_given_taps():
    distiller = fam_kd_step(trained_mode_net(1, width=8).train(), trained_mode_net(2, width=16), 32)
    assert trainable_without_grad(distiller) == []
    assert [s.name for s in feature_info(distiller.student).stages] == ["stage1", "stage2", "stage3"]
    assert [s.channels for s in feature_info(distiller.teacher).stages] == [16, 32, 64]
    given = fam_kd_step(
        trained_mode_net(1).train(),
        trained_mode_net(2, width=16),
        32,
        student_taps=["stage2", "stage3"],
        teacher_taps=["stage2", "stage3"],
    )
    assert trainable_without_grad(given) == [] and len(given.heads) == 3  # two stage levels and the pooled one


@pytest.mark.parametrize("method", list_distillers())
def test_every_method_takes_a_step_with_a_timm_pair(method):
    torch.manual_seed(0)
    teacher = create_model("timm:resnet10t", num_classes=3, image_size=32)
    student = create_model("timm:mobilenetv3_small_050", num_classes=3, image_size=32)
    distiller = create_distiller(
        method, student=student, teacher=teacher, image_size=32, num_samples=8, labels=torch.arange(8) % 3
    ).train()
    extra = (torch.arange(4),) if distiller.needs_sample_indices else ()
    _, losses = distiller(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), 1, *extra)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()) and trainable_without_grad(distiller) == []


# ---- bad input -----------------------------------------------------------------------------------------------


def test_an_unknown_timm_name_names_the_nearest_ones():
    with pytest.raises(ConfigError, match=r"unknown timm model 'convnext_atoo'; nearest: timm:convnext_atto"):
        create_model("timm:convnext_atoo", num_classes=3)
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'resnet19'.*torchvision:resnet18"):
        create_model("torchvision:resnet19", num_classes=3)


def test_a_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'famkd\[timm\]'"):
        create_model("timm:resnet18", num_classes=3)


def test_a_model_without_spatial_features_is_refused():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ConfigError, match="found no spatial feature maps"):
        attach_taps(mlp, 8)


def test_a_bad_tap_path_names_the_nearest_module():
    with pytest.raises(ConfigError, match=r"tap 'stag2' is not a module of the model \(did you mean 'stage2'\?\)"):
        attach_taps(Net(), 32, taps=["stag2"])


def test_student_preact_on_a_model_without_pre_activations_is_a_config_error():
    teacher = create_model("timm:resnet10t", num_classes=3, image_size=32)
    student = create_model("timm:convnext_atto", num_classes=3, image_size=32)
    with pytest.raises(ConfigError, match=r"student timm:convnext_atto has no pre-activation maps"):
        create_distiller("reviewkd", student=student, teacher=teacher, image_size=32, student_preact=True)


def test_a_checkpoint_whose_head_does_not_fit_says_so_and_student_init_replaces_it(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = create_model("timm:resnet10t", num_classes=100, image_size=32)
    path = tmp_path / "teacher.safetensors"
    save_file(source.state_dict(), path)
    with pytest.raises(FamkdError, match=r"a timm:resnet10t with a 100-class head, but the data has 3 classes"):
        model_from_checkpoint({**source.state_dict()}, path, "timm:resnet10t", 3, image_size=32)
    student = create_model("timm:resnet10t", num_classes=3, image_size=32)
    head = student.fc.weight.detach().clone()
    note = load_student_init(student, path)
    assert "100-class head replaced" in note and torch.equal(student.fc.weight, head)
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(student.state_dict()[k], v) for k, v in body.items())
    with pytest.raises(FamkdError, match="does not fit the student"):
        load_student_init(create_model("timm:resnet18", num_classes=3, image_size=32), path)


def test_a_zoo_teacher_with_another_class_count_than_the_data_says_so(tmp_path):
    path = tmp_path / "resnet8_100.pth"
    torch.save({"model": create_model("resnet8", num_classes=100).state_dict()}, path)
    with pytest.raises(FamkdError, match=r"holds a resnet8 with a 100-class head, but the data has 10 classes"):
        model_from_checkpoint(torch.load(path), path, "resnet8", 10)


def test_taps_on_swapped_modules_are_hooked_again_and_a_copy_has_none():
    import copy

    from famkd.models.taps import refresh_taps, tap_reader

    net = trained_mode_net()
    attach_taps(net, 32, taps=["stem.1", "stage3"])
    swapped = nn.BatchNorm2d(8).eval()
    swapped.load_state_dict(net.stem[1].state_dict())
    net.stem[1] = swapped  # as convert_sync_batchnorm swaps batch norms
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(RuntimeError, match=r"did not reach the tapped module call\(s\) stem.1; .*refresh_taps"):
        forward_features(net, x)
    refresh_taps(net)
    with torch.no_grad():
        torch.testing.assert_close(forward_features(net, x).stages[0], swapped(net.stem[0](x)))
    assert tap_reader(copy.deepcopy(net)) is None
