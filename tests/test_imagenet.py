"""ImageNet models (torchvision's ResNets with FX taps, MobileNetV1) and ImageNet-style folder loading."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from famkd.data.datasets import DataFormatError, DataNotFoundError
from famkd.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNetLoader,
    eval_transform,
    load_imagenet,
    train_transform,
)
from famkd.errors import FamkdError
from famkd.models import FeatureModel, create_model
from famkd.models.imagenet.mobilenetv1 import MobileNetV1
from famkd.models.taps import tap_reader
from tiny_imagenet import WNIDS, write_tiny_imagenet

RESNETS = ["resnet18", "resnet34", "resnet50"]
CROP, RESIZE = 32, 36  # small transform sizes for the tiny 48 x 40 images


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Random affine parameters and running statistics, so eval-mode BNs are far from identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor, low in ((module.weight, 0.5), (module.bias, -0.5), (module.running_mean, -0.5)):
                    tensor.copy_(low + torch.rand(tensor.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))


# ---- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_state_dict_is_torchvisions(name):
    ours = create_model(name, num_classes=1000).state_dict()
    reference = getattr(torchvision.models, name)().state_dict()
    assert list(ours) == list(reference)
    assert all(ours[key].shape == reference[key].shape for key in reference)


@pytest.mark.parametrize("name", RESNETS)
def test_torchvision_weights_load_strictly_and_give_the_same_logits(name):
    reference = getattr(torchvision.models, name)()
    randomize_batch_norms(reference)
    model = create_model(name, num_classes=1000)
    model.load_state_dict(reference.state_dict(), strict=True)
    model.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(model(x), expected)
        assert torch.equal(model.forward_features(x).logits, expected)


def manual_resnet18_taps(model: nn.Module, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Stage outputs, pre-activations (last block's bn2(conv2(.)) + identity) and pooled vector, by hand."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    stages, preacts = [], []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        *head, last = stage
        for block in head:
            x = block(x)
        identity = x if last.downsample is None else last.downsample(x)
        preact = last.bn2(last.conv2(torch.relu(last.bn1(last.conv1(x))))) + identity
        x = torch.relu(preact)
        stages.append(x)
        preacts.append(preact)
    return stages, preacts, torch.flatten(model.avgpool(x), 1)


def test_resnet18_taps_equal_a_manual_forward_through_torchvisions_modules():
    reference = torchvision.models.resnet18().double().eval()
    randomize_batch_norms(reference)
    model = create_model("resnet18", num_classes=1000).double().eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        stages, preacts, pooled = manual_resnet18_taps(reference, x)
        features = model.forward_features(x)
    for ours, expected in zip(features.stages + features.preact, stages + preacts, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    assert all((preact < 0).any() for preact in features.preact)  # not overwritten by the in-place ReLU
    torch.testing.assert_close(features.pooled, pooled, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(features.logits, reference.fc(pooled), rtol=1e-12, atol=1e-12)


def test_the_taps_are_each_stages_output_and_the_input_of_its_last_relu():
    for name, last_blocks in (("resnet18", [1, 1, 1, 1]), ("resnet50", [2, 3, 5, 2])):
        model = create_model(name).eval()
        model.forward_features(torch.randn(1, 3, 32, 32))
        reader = tap_reader(model)
        assert [tap.map.path for tap in reader.taps] == [f"layer{i}" for i in range(1, 5)]
        preacts = [(tap.preact.path, tap.preact.kind, tap.preact.clone) for tap in reader.taps]
        # the ReLU module called last in each stage: the block's second call of a BasicBlock's shared ReLU
        assert preacts == [(f"layer{i}.{block}.relu", "input", True) for i, block in enumerate(last_blocks, 1)]
        assert [tap.preact.call for tap in reader.taps] == [1 if name == "resnet18" else 2] * 4
        assert (reader.classifier.path, reader.classifier.kind) == ("fc", "input")


@pytest.mark.parametrize(
    ("name", "channels", "pooled"),
    [
        ("resnet18", [64, 128, 256, 512], 512),
        ("resnet34", [64, 128, 256, 512], 512),
        ("resnet50", [256, 512, 1024, 2048], 2048),
        ("MobileNetV1", [128, 256, 512, 1024], 1024),
    ],
)
def test_feature_info_describes_the_actual_taps(name, channels, pooled):
    model = create_model(name, num_classes=1000).eval()
    info = model.feature_info
    assert info.channels == channels and info.pooled_channels == pooled
    assert [stage.stride for stage in info.stages] == [4, 8, 16, 32]
    for image_size in (224, 64):
        with torch.no_grad():
            features = model.forward_features(torch.randn(1, 3, image_size, image_size))
        expected = [
            (1, c, side, side) for c, side in zip(channels, [stage.spatial_size(image_size) for stage in info.stages])
        ]
        assert [tuple(t.shape) for t in features.stages] == expected
        assert [tuple(t.shape) for t in features.preact] == expected
        assert features.pooled.shape == (1, pooled) and features.logits.shape == (1, 1000)


@pytest.mark.parametrize("name", ["resnet18", "MobileNetV1"])
def test_backward_through_forward_features_reaches_the_models_parameters(name):
    model = create_model(name, num_classes=10).train()
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    loss = sum(t.square().mean() for t in [*features.stages, *features.preact, features.pooled, features.logits])
    loss.backward()
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_the_extractor_sees_training_updates_and_stays_out_of_the_state_dict():
    model = create_model("resnet18", num_classes=10).eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.forward_features(x).logits
    model.train().forward_features(x).logits.square().mean().backward()
    assert int(model.bn1.num_batches_tracked) == 1  # one pass in training mode
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    model.eval()
    with torch.no_grad():
        after = model.forward_features(x).logits
    assert torch.equal(after, model(x)) and not torch.allclose(after, before)
    assert list(model.state_dict()) == keys
    assert all(not name.startswith("_") for name, _ in model.named_modules())


def test_building_the_extractor_keeps_each_modules_mode():
    model = create_model("resnet18", num_classes=10).train()
    model.layer1[0].bn1.eval()  # a frozen BN inside a training model
    model.forward_features(torch.randn(2, 3, 32, 32))
    assert not model.layer1[0].bn1.training
    assert all(module.training for module in model.modules() if module is not model.layer1[0].bn1)


def test_a_copy_builds_its_own_extractor_on_its_own_parameters():
    model = create_model("resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    model.forward_features(x)
    twin = copy.deepcopy(model)
    twin.forward_features(x).logits.sum().backward()
    assert twin.fc.weight.grad is not None and model.fc.weight.grad is None


def test_mobilenetv1_state_dict_follows_the_benchmark_layout():
    state = MobileNetV1().state_dict()
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = ["model.0.0.weight", *(f"model.0.1.{key}" for key in bn)]
    for block in range(1, 14):
        for conv, norm in ((0, 1), (3, 4)):
            expected += [f"model.{block}.{conv}.weight", *(f"model.{block}.{norm}.{key}" for key in bn)]
    assert list(state) == [*expected, "fc.weight", "fc.bias"]
    assert state["model.1.0.weight"].shape == (32, 1, 3, 3)  # depthwise
    assert state["model.13.3.weight"].shape == (1024, 1024, 1, 1) and state["fc.weight"].shape == (1000, 1024)
    assert sum(p.numel() for p in MobileNetV1().parameters()) == 4_231_976  # MobileNet 1.0's published count


def test_mobilenetv1_taps_are_the_benchmarks_blocks():
    model = MobileNetV1(num_classes=10).eval()
    randomize_batch_norms(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        blocks = model.model
        for stage, preact, end in zip(features.stages, features.preact, (3, 5, 11, 13), strict=True):
            torch.testing.assert_close(preact, blocks[end][:-1](blocks[:end](x)))
            torch.testing.assert_close(stage, blocks[: end + 1](x))
        torch.testing.assert_close(features.logits, model(x))
    assert [stage.name for stage in model.feature_info.stages] == ["model.3", "model.5", "model.11", "model.13"]


def test_imagenet_models_are_registered_with_1000_classes_by_default():
    for name in [*RESNETS, "MobileNetV1"]:
        assert isinstance(create_model(name, num_classes=7), FeatureModel)
    assert MobileNetV1().fc.out_features == 1000
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet18", num_classes=0)


# ---- data -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny tree with the folder val layout; read it, never write into it."""
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny_imagenet"))


def splits(root: Path):
    return load_imagenet(root, crop_size=CROP, resize_size=RESIZE)


def test_classes_and_samples_are_torchvision_image_folders(tiny_root):
    train, val = splits(tiny_root)
    reference = torchvision.datasets.ImageFolder(tiny_root / "train")
    assert train.classes == tuple(reference.classes) == WNIDS and train.num_classes == 3
    assert train.samples == reference.samples and len(train) == 12
    assert val.classes == train.classes and len(val) == 6
    assert all(Path(path).parent.name == WNIDS[label] for path, label in val.samples)


def test_flat_val_layout_gives_the_folder_layout_labels(tiny_root, tmp_path):
    _, folder_val = splits(tiny_root)
    _, flat_val = splits(write_tiny_imagenet(tmp_path, val_layout="flat"))
    assert sorted((Path(p).name, label) for p, label in flat_val.samples) == sorted(
        (Path(p).name, label) for p, label in folder_val.samples
    )


def test_the_label_file_may_sit_in_the_root(tmp_path):
    root = write_tiny_imagenet(tmp_path, val_layout="flat")
    shutil.move(root / "val" / "LOC_val_solution.csv", root / "LOC_val_solution.csv")
    assert len(splits(root)[1]) == 6


def test_transforms_give_the_documented_sizes_and_normalisation(tiny_root):
    train, val = splits(tiny_root)
    assert train[0].image.shape == val[0].image.shape == (3, CROP, CROP) and train.image_size == CROP
    assert train_transform()(Image.new("RGB", (48, 40))).shape == (3, 224, 224)
    assert eval_transform()(Image.new("RGB", (48, 40))).shape == (3, 224, 224)
    path, _ = val.samples[0]
    with Image.open(path) as image:
        resized = TF.center_crop(TF.resize(image.convert("RGB"), RESIZE), CROP)
    expected = (TF.to_tensor(resized) - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[
        :, None, None
    ]
    torch.testing.assert_close(val[0].image, expected)


def test_loader_yields_batches_like_the_batch_loader(tiny_root):
    train, val = splits(tiny_root)
    train_loader = ImageNetLoader(train, 5, train=True, workers=0, with_indices=True)
    batches = list(train_loader)
    assert len(train_loader) == len(batches) == 2  # 12 images, the partial batch dropped
    images, labels, indices = batches[0]
    assert images.shape == (5, 3, CROP, CROP) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.tolist() == [train.samples[i][1] for i in indices.tolist()]
    val_batches = list(ImageNetLoader(val, 4, train=False, workers=0))
    assert [len(labels) for _, labels in val_batches] == [4, 2]
    assert torch.cat([labels for _, labels in val_batches]).tolist() == [label for _, label in val.samples]
    assert len(ImageNetLoader(train, 1, train=True, workers=0, max_steps=3)) == 3


def test_loader_settings_follow_the_device_and_workers(tiny_root):
    train, _ = splits(tiny_root)
    loader = ImageNetLoader(train, 4, train=True, workers=2, device="cuda").loader
    assert loader.pin_memory and loader.persistent_workers and loader.drop_last
    loader = ImageNetLoader(train, 4, train=False, workers=0).loader
    assert not (loader.pin_memory or loader.persistent_workers or loader.drop_last)
    assert loader.sampler.sampler == range(0, len(train), 1)  # evaluation: every image once, in order, no padding
    loader = ImageNetLoader(train, 4, train=True, workers=0).loader
    sampler = loader.sampler.sampler  # inside the resumed epoch's SkipFirst
    assert isinstance(sampler, DistributedSampler) and sampler.num_replicas == 1


def epoch_indices(loader: ImageNetLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return [int(i) for _, _, indices in loader for i in indices]


def test_distributed_ranks_split_the_train_set_and_set_epoch_reshuffles(tiny_root):
    train, _ = splits(tiny_root)
    loaders = [
        ImageNetLoader(train, 2, train=True, workers=0, with_indices=True, num_replicas=2, rank=rank) for rank in (0, 1)
    ]
    first, second = (epoch_indices(loader, 0) for loader in loaders)
    assert len(first) == len(second) == 6
    assert set(first).isdisjoint(second) and set(first) | set(second) == set(range(12))
    assert epoch_indices(loaders[0], 1) != first
    assert epoch_indices(loaders[0], 0) == first  # the order depends on (seed, epoch) alone


def test_missing_root_train_or_val_is_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"does not exist.*ROOT/train/<class>"):
        splits(tmp_path / "nowhere")
    (tmp_path / "val").mkdir()
    with pytest.raises(DataNotFoundError, match=r"no train/ folder.*ROOT/train/<class>/\*\.JPEG"):
        splits(tmp_path)
    (tmp_path / "val").rmdir()
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no val/ folder"):
        splits(tmp_path)


def test_an_empty_class_folder_is_named(tmp_path):
    root = write_tiny_imagenet(tmp_path)
    (root / "train" / "n09999999").mkdir()
    with pytest.raises(DataFormatError, match=r"empty class folder\(s\) n09999999"):
        splits(root)


def test_a_train_folder_without_classes_is_refused(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DataFormatError, match="no class folders"):
        splits(tmp_path)


def test_val_classes_not_in_train_are_named(tmp_path):
    root = write_tiny_imagenet(tmp_path)
    shutil.copytree(root / "val" / WNIDS[0], root / "val" / "n08888888")
    with pytest.raises(DataFormatError, match="val classes not in train/: n08888888"):
        splits(root)


def test_flat_val_labels_must_exist_cover_the_images_and_name_train_classes(tmp_path):
    root = write_tiny_imagenet(tmp_path, val_layout="flat")
    label_file = root / "val" / "LOC_val_solution.csv"
    rows = label_file.read_text().splitlines()
    label_file.write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(DataFormatError, match=r"no row for 1 val images: .*ILSVRC2012_val_00000006\.JPEG"):
        splits(root)
    label_file.write_text("\n".join([*rows[:-1], rows[-1].replace(",n0", ",n7")]) + "\n")
    with pytest.raises(DataFormatError, match="val classes not in train/: n7"):
        splits(root)
    label_file.unlink()
    with pytest.raises(DataFormatError, match="LOC_val_solution.csv"):
        splits(root)


def test_data_errors_are_famkd_errors():
    assert issubclass(DataNotFoundError, FamkdError) and issubclass(DataFormatError, FamkdError)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_is_replaced_counted_and_reported(tmp_path, workers):
    train, _ = splits(write_tiny_imagenet(tmp_path))
    broken, _ = train.samples[5]
    Path(broken).write_bytes(b"not an image")
    loader = ImageNetLoader(train, 4, train=False, workers=workers, with_indices=True)
    with pytest.warns(UserWarning, match=r"1 unreadable image file\(s\).*replaced.*" + Path(broken).name):
        batches = list(loader)
    assert loader.skipped == [broken]
    assert [len(labels) for _, labels, _ in batches] == [4, 4, 4]
    assert batches[1][2].tolist() == [4, 6, 6, 7]  # the next readable image stands in, with its label
    assert batches[1][1].tolist()[1] == train.samples[6][1]


def test_a_truncated_image_is_unreadable_too(tmp_path):
    train, _ = splits(write_tiny_imagenet(tmp_path))
    path, _ = train.samples[0]
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    assert train[0].skipped == (path,) and train[0].position == 1


def test_a_run_of_unreadable_images_is_a_format_error(tmp_path):
    train, _ = splits(write_tiny_imagenet(tmp_path))
    for path, _ in train.samples:
        Path(path).write_bytes(b"")
    with pytest.raises(DataFormatError, match="in a row cannot be decoded"):
        train[0]


def test_class_names_come_from_loc_synset_mapping_when_the_root_holds_it(tiny_root, tmp_path):
    train, _ = splits(tiny_root)
    assert train.class_names == WNIDS  # no mapping file: the wnids
    root = tmp_path / "named"
    shutil.copytree(tiny_root, root)
    lines = [f"{wnid} name{index}, synonym" for index, wnid in enumerate(reversed(WNIDS))] + ["n99999999 other"]
    (root / "LOC_synset_mapping.txt").write_text("\n".join(lines) + "\n")
    train, val = splits(root)
    expected = tuple(f"name{len(WNIDS) - 1 - WNIDS.index(wnid)}" for wnid in WNIDS)
    assert train.class_names == val.class_names == expected and train.classes == WNIDS
