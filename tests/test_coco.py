"""COCO detection data (famkd.detection.coco) and COCO box AP (famkd.detection.evaluation), on tiny_coco.py's copy."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor, nn
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from famkd.data.datasets import DataFormatError, DataNotFoundError
from famkd.detection.coco import (
    TALL,
    WIDE,
    CocoCategories,
    CocoLoader,
    CocoOptions,
    DetectionTransform,
    GroupedBatchSampler,
    SampleKey,
    load_coco,
    resized_size,
)
from famkd.detection.evaluation import METRICS, collect_detections, evaluate_detections
from famkd.errors import ConfigError, FamkdError
from tiny_coco import COLOURS, write_tiny_coco

# min_size, max_size that keep the tiny 64 x 48 and 48 x 64 images at their size.
NATIVE = {"min_size": 48, "max_size": 64}

# The usable boxes of tiny_coco.py's JSON, worked out by hand: [x, y, w, h] -> [x, y, x + w, y + h],
# category ids 1, 3, 7 -> labels 1, 2, 3; crowd regions and boxes <= 1 pixel wide or high left out.
TRAIN_TARGETS = {
    11: ([[4, 6, 24, 16], [30, 20, 55, 42]], [1, 3]),
    12: ([[5, 5, 35, 45]], [2]),
    15: ([[50, 30, 64, 45]], [3]),  # [50, 30, 20, 15] clipped to the 64 pixel wide image
    16: ([[8, 12, 32, 42], [20, 40, 30, 52]], [1, 1]),
}
VAL_TARGETS = {
    21: ([[6, 8, 26, 22], [36, 18, 58, 42]], [1, 2]),
    22: ([[10, 10, 38, 46]], [3]),
    23: ([[8, 6, 38, 36]], [2]),
    24: ([], []),
}


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> Path:
    """Root of tiny_coco.py's COCO copy, shared by the module: read it, never write into it."""
    return write_tiny_coco(tmp_path_factory.mktemp("tiny_coco"))


def assert_target(target: dict[str, Tensor], boxes: list[list[float]], labels: list[int]) -> None:
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (len(boxes), 4)
    assert target["labels"].dtype == torch.int64
    torch.testing.assert_close(target["boxes"], torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    assert target["labels"].tolist() == labels


def assert_boxes_hold_their_colours(image: Tensor, target: dict[str, Tensor], categories: CocoCategories) -> None:
    """The pixel at each box's centre has the colour tiny_coco.py filled that box with: image and boxes agree."""
    for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist()):
        colour = torch.tensor(COLOURS[categories.ids[label - 1]]) / 255
        torch.testing.assert_close(image[:, int((y1 + y2) / 2), int((x1 + x2) / 2)], colour, atol=0.15, rtol=0)


# ---- data -----------------------------------------------------------------------------------


def test_labels_are_the_sorted_category_ids_numbered_from_one(tiny_coco):
    categories = load_coco(tiny_coco, "val", **NATIVE).categories
    assert categories.ids == (1, 3, 7) and categories.names == ("red box", "green box", "blue box")
    assert categories.num_classes == 4
    assert [categories.label(category_id) for category_id in (1, 3, 7)] == [1, 2, 3]
    assert categories.category_ids(torch.tensor([3, 1, 2, 2])).tolist() == [7, 1, 3, 3]
    for outside in (0, 4):
        with pytest.raises(DataFormatError, match="num_classes=4"):
            categories.category_ids(torch.tensor([1, outside]))


def test_train_targets_are_xyxy_boxes_with_contiguous_labels(tiny_coco):
    dataset = load_coco(tiny_coco, "train", **NATIVE, flip_prob=0)
    assert dataset.image_ids == list(TRAIN_TARGETS)  # 13 (only crowd and degenerate boxes) and 14 (none) left out
    for index, (image_id, (boxes, labels)) in enumerate(TRAIN_TARGETS.items()):
        image, target = dataset[index]
        assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
        width, height = (64, 48) if image_id in (11, 15) else (48, 64)
        assert image.shape == (3, height, width)
        assert target["image_id"].item() == image_id and target["orig_size"].tolist() == [height, width]
        assert_target(target, boxes, labels)
        assert_boxes_hold_their_colours(image, target, dataset.categories)


def test_val_keeps_every_image_and_leaves_crowd_regions_out(tiny_coco):
    dataset = load_coco(tiny_coco, "val", **NATIVE)
    assert dataset.image_ids == list(VAL_TARGETS) and dataset.transform.flip_prob == 0
    for index, (boxes, labels) in enumerate(VAL_TARGETS.values()):
        assert_target(dataset[index][1], boxes, labels)
    assert load_coco(tiny_coco, "train").transform.flip_prob == 0.5


@pytest.mark.parametrize(
    "min_size, max_size, wide_size",
    [(96, 200, (96, 128)), (96, 100, (75, 100))],  # (height, width): shorter side 96, or longer side 100
)
def test_resize_keeps_the_aspect_and_scales_the_boxes(tiny_coco, min_size, max_size, wide_size):
    dataset = load_coco(tiny_coco, "train", min_size=min_size, max_size=max_size, flip_prob=0)
    for index, (boxes, labels) in enumerate(TRAIN_TARGETS.values()):
        image, target = dataset[index]
        file_height, file_width = target["orig_size"].tolist()
        height, width = wide_size if file_width > file_height else wide_size[::-1]
        assert image.shape == (3, height, width)
        assert width / file_width == height / file_height  # 2 and 1.5625 are exact
        scale = torch.tensor([width / file_width, height / file_height] * 2)
        assert_target(target, (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale).tolist(), labels)
        assert_boxes_hold_their_colours(image, target, dataset.categories)


def test_flip_mirrors_the_image_and_its_boxes(tiny_coco):
    unflipped = load_coco(tiny_coco, "train", **NATIVE, flip_prob=0)
    flipped = load_coco(tiny_coco, "train", **NATIVE, flip_prob=1)
    for index in range(len(unflipped)):
        (image, target), (flipped_image, flipped_target) = unflipped[index], flipped[index]
        assert torch.equal(flipped_image, image.flip(-1))
        width = image.shape[-1]
        x1, y1, x2, y2 = target["boxes"].unbind(1)
        torch.testing.assert_close(flipped_target["boxes"], torch.stack([width - x2, y1, width - x1, y2], dim=1))
        assert torch.equal(flipped_target["labels"], target["labels"])
        assert_boxes_hold_their_colours(flipped_image, flipped_target, flipped.categories)


def test_a_model_transform_with_the_same_sizes_does_not_resize_again():
    """The resize famkd does in the dataset leaves torchvision's GeneralizedRCNNTransform a factor of exactly 1."""
    min_size, max_size = 20, 33
    model_transform = GeneralizedRCNNTransform(min_size, max_size, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    for mode in (True, False):
        model_transform.train(mode)
        for height in range(7, 90, 3):
            for width in range(5, 90, 4):
                image = torch.rand(3, *resized_size(height, width, min_size, max_size))
                assert torch.equal(model_transform.resize(image)[0], image), (height, width)


def test_only_the_split_asked_for_must_be_there(tmp_path):
    root = write_tiny_coco(tmp_path / "coco")
    shutil.rmtree(root / "train2017")
    (root / "annotations" / "instances_train2017.json").unlink()
    assert len(load_coco(root, "val")) == len(VAL_TARGETS)


@pytest.mark.parametrize(
    "missing, named",
    [(".", "does not exist"), ("val2017", "no val2017/ image folder"), ("annotations", "instances_val2017.json")],
)
def test_a_missing_folder_or_file_is_named_with_the_layout(tmp_path, missing, named):
    root = write_tiny_coco(tmp_path / "coco")
    shutil.rmtree(root / missing)
    with pytest.raises(DataNotFoundError, match=named) as error:
        load_coco(root, "val")
    assert "ROOT/annotations/instances_{train,val}2017.json" in str(error.value)
    assert isinstance(error.value, FamkdError) and isinstance(error.value, FileNotFoundError)


def rewrite_annotations(root: Path, change) -> None:
    path = root / "annotations" / "instances_val2017.json"
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "annotations" / "instances_val2017.json").write_text("{not json"), "not COCO instances"),
        (lambda root: rewrite_annotations(root, lambda c: c.pop("categories")), "has no categories"),
        (lambda root: rewrite_annotations(root, lambda c: c["annotations"][0].update(category_id=5)), "ids .*: 5"),
    ],
)
def test_a_damaged_annotation_file_is_reported(tmp_path, damage, message):
    root = write_tiny_coco(tmp_path / "coco")
    damage(root)
    with pytest.raises(DataFormatError, match=message):
        load_coco(root, "val")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda path: path.unlink(), "cannot read image"),
        (lambda path: Image.new("RGB", (30, 20)).save(path, format="JPEG"), "is 30x20 pixels but"),
    ],
)
def test_a_missing_or_mismatched_image_is_reported(tmp_path, damage, message):
    root = write_tiny_coco(tmp_path / "coco")
    dataset = load_coco(root, "val")
    damage(root / "val2017" / dataset.coco.imgs[21]["file_name"])
    with pytest.raises(DataFormatError, match=message):
        dataset[0]


# ---- grouped batches ------------------------------------------------------------------------

GROUPS = [0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0]  # 5 indices in group 0, 6 in group 1


def sampler(**options) -> GroupedBatchSampler:
    return GroupedBatchSampler(GROUPS, 2, **{"shuffle": True, "drop_last": False, **options})


def test_batches_fill_per_group_in_index_order_without_shuffling():
    batches = list(sampler(shuffle=False))
    assert batches == [[1, 2], [0, 3], [4, 6], [5, 7], [8, 9], [10]]
    assert list(sampler(shuffle=False, drop_last=True)) == batches[:-1]


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_every_batch_is_one_group_and_every_index_comes_once_an_epoch(epoch):
    shuffled = sampler(seed=3)
    shuffled.set_epoch(epoch)
    batches = list(shuffled)
    assert all(len({GROUPS[index] for index in batch}) == 1 for batch in batches)
    assert sorted(index for batch in batches for index in batch) == list(range(len(GROUPS)))
    assert len(batches) == len(shuffled) == 6  # ceil(5 / 2) + ceil(6 / 2)


def test_seed_and_epoch_alone_set_the_batches():
    def batches(seed: int, epoch: int) -> list[list[int]]:
        shuffled = sampler(seed=seed)
        shuffled.set_epoch(epoch)
        return list(shuffled)

    assert batches(1, 4) == batches(1, 4)
    assert batches(1, 4) != batches(1, 5) and batches(1, 4) != batches(2, 4)


@pytest.mark.parametrize("num_replicas", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_processes_take_disjoint_shares_of_the_batches(num_replicas, drop_last):
    shares = []
    for rank in range(num_replicas):
        share = sampler(seed=5, drop_last=drop_last, num_replicas=num_replicas, rank=rank)
        share.set_epoch(7)
        shares.append(list(share))
        assert len(shares[-1]) == len(share)
        assert all(len({GROUPS[index] for index in batch}) == 1 for batch in shares[-1])
    indices = [index for share in shares for batch in share for index in batch]
    assert len(indices) == len(set(indices))
    if drop_last:  # 5 full batches cut to a multiple of num_replicas, shared evenly
        assert {len(share) for share in shares} == {5 // num_replicas}
        assert all(len(batch) == 2 for share in shares for batch in share)
    else:
        assert sorted(indices) == list(range(len(GROUPS)))


def test_the_loader_yields_lists_of_one_aspect_group(tiny_coco):
    dataset = load_coco(tiny_coco, "train", **NATIVE)
    assert dataset.aspect_groups() == [WIDE, TALL, WIDE, TALL]
    loader = CocoLoader(dataset, batch_size=2, train=True, workers=1, seed=0)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == 2
        seen = []
        for images, targets in batches:
            assert len(images) == len(targets) == 2
            assert len({image.shape for image in images}) == 1  # one group: here one size
            seen.extend(int(target["image_id"]) for target in targets)
        assert sorted(seen) == list(TRAIN_TARGETS)


def image_flips(loader: CocoLoader, epoch: int, start: int = 0) -> list[tuple[int, bool]]:
    """(image id, flipped?) of the loader's batches of `epoch` from `start`, compared with the unflipped image."""
    unflipped = load_coco(loader.dataset.image_dir.parent, "train", **NATIVE, flip_prob=0)
    loader.set_epoch(epoch, start)
    flips = []
    for images, targets in loader:
        for image, target in zip(images, targets):
            original = unflipped[SampleKey(unflipped.image_ids.index(int(target["image_id"])), 0, 0)][0]
            assert torch.equal(image, original) or torch.equal(image, original.flip(-1))
            flips.append((int(target["image_id"]), not torch.equal(image, original)))
    return flips


def test_flips_follow_from_seed_epoch_and_index_in_any_worker(tiny_coco):
    dataset = load_coco(tiny_coco, "train", **NATIVE)
    in_process = CocoLoader(dataset, batch_size=2, train=True, workers=0, seed=3)
    in_workers = CocoLoader(dataset, batch_size=2, train=True, workers=2, seed=3)
    for epoch in range(4):
        flips = image_flips(in_process, epoch)
        expected = [
            (dataset.image_ids[index], SampleKey(index, 3, epoch).uniform_draw() < 0.5)
            for batch in in_process.batch_sampler.epoch_batches()
            for index in batch
        ]
        assert flips == expected
        torch.manual_seed(epoch)  # the main process's generator plays no part, and is left as it was
        state = torch.get_rng_state()
        assert image_flips(in_workers, epoch) == flips
        assert torch.equal(torch.get_rng_state(), state)
        assert image_flips(in_workers, epoch, start=1) == flips[2:]  # a resumed epoch: its second batch on
    draws = [SampleKey(index, 3, epoch).uniform_draw() for index in range(4) for epoch in range(4)]
    assert 0 < sum(draw < 0.5 for draw in draws) < len(draws)  # the draws do flip some images, not all


TRAIN_SIZES = (32, 40, 48)  # multi-scale training sizes for the tiny images (max_size 64)


def shorter_sides(loader: CocoLoader, epoch: int, start: int = 0) -> list[tuple[int, int]]:
    """(image id, shorter side) of each image the loader yields for `epoch` from batch `start` on; each batch's
    images share an aspect group."""
    loader.set_epoch(epoch, start)
    sides = []
    for images, targets in loader:
        assert len({image.shape[-1] > image.shape[-2] for image in images}) == 1  # one aspect group a batch
        sides.extend((int(target["image_id"]), min(image.shape[-2:])) for image, target in zip(images, targets))
    return sides


def test_multi_scale_sizes_follow_from_seed_epoch_and_index_in_any_worker(tiny_coco):
    """data.min_size_train: each training image's shorter side is drawn per image from the list by its key's
    second uniform draw (the first is the flip's, as before), the same in worker processes and from a resumed
    batch on; the process's torch generator plays no part. Image and boxes equal the single-scale sample at
    the drawn size."""
    dataset = load_coco(tiny_coco, "train", **NATIVE, train_sizes=TRAIN_SIZES)
    in_process = CocoLoader(dataset, batch_size=2, train=True, workers=0, seed=3)
    in_workers = CocoLoader(dataset, batch_size=2, train=True, workers=2, seed=3)
    drawn = []
    for epoch in range(4):
        sides = shorter_sides(in_process, epoch)
        keys = [SampleKey(index, 3, epoch) for batch in in_process.batch_sampler.epoch_batches() for index in batch]
        expected = [TRAIN_SIZES[int(key.uniform_draws(2)[1] * len(TRAIN_SIZES))] for key in keys]
        assert sides == [(dataset.image_ids[key.item], size) for key, size in zip(keys, expected)]
        assert all(key.uniform_draws(2)[0] == key.uniform_draw() for key in keys)  # the flips are unchanged
        torch.manual_seed(epoch)
        state = torch.get_rng_state()
        assert shorter_sides(in_workers, epoch) == sides
        assert torch.equal(torch.get_rng_state(), state)
        assert shorter_sides(in_workers, epoch, start=1) == sides[2:]  # a resumed epoch: its second batch on
        drawn.extend(expected)
        for key, size in zip(keys, expected):
            single = load_coco(tiny_coco, "train", min_size=size, max_size=64)
            image, target = dataset[key]
            single_image, single_target = single[key]
            assert torch.equal(image, single_image) and torch.equal(target["boxes"], single_target["boxes"])
    assert set(drawn) == set(TRAIN_SIZES)  # every size is drawn, and one epoch's images differ in size
    one = load_coco(tiny_coco, "train", **NATIVE, train_sizes=(48,))  # one value: that size, as without a list
    plain = load_coco(tiny_coco, "train", **NATIVE)
    key = SampleKey(0, 3, 1)
    assert torch.equal(one[key][0], plain[key][0]) and min(plain[key][0].shape[-2:]) == 48


def test_multi_scale_sizes_are_checked() -> None:
    assert CocoOptions(root="x", min_size_train=[640, 800]).min_size_train == [640, 800]
    with pytest.raises(ConfigError, match="every size must lie in 1..data.max_size=1333"):
        CocoOptions(root="x", min_size_train=[640, 1400])
    with pytest.raises(ValueError, match="min_size <= max_size"):
        DetectionTransform(48, 64, 0.5, (0, 48))


# ---- evaluation -----------------------------------------------------------------------------


def ground_truth(*boxes: list[float], side: int = 300) -> COCO:
    """One side x side image (id 1) holding `boxes` [x, y, w, h] of one category (id 5, label 1)."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": side, "height": side}],
        "annotations": [
            {"id": number, "image_id": 1, "category_id": 5, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for number, box in enumerate(boxes, start=1)
        ],
        "categories": [{"id": 5, "name": "box"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detected(*boxes: list[float]) -> dict[int, dict[str, Tensor]]:
    """Image 1's detections: `boxes` x1, y1, x2, y2, each with score 1 and label 1."""
    count = len(boxes)
    return {
        1: {
            "boxes": torch.tensor(boxes).reshape(-1, 4),
            "scores": torch.ones(count),
            "labels": torch.ones(count, dtype=torch.int64),
        }
    }


def assert_metrics(metrics: dict[str, float], **expected: float) -> None:
    assert list(metrics) == list(METRICS)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, nan_ok=True, abs=1e-9), name


class OracleDetector(nn.Module):
    """Answers the i-th image it is given with the boxes and labels of the i-th of `samples` (score 1)."""

    def __init__(self, samples: list[tuple[Tensor, dict[str, Tensor]]]):
        super().__init__()
        self.device_anchor = nn.Parameter(torch.zeros(()))
        self.samples = iter(samples)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        assert not self.training and not torch.is_grad_enabled()
        outputs = []
        for image in images:
            expected_image, target = next(self.samples)
            assert torch.equal(image, expected_image)
            count = len(target["labels"])
            outputs.append({"boxes": target["boxes"], "scores": torch.ones(count), "labels": target["labels"]})
        return outputs


def test_ground_truth_as_detections_scores_100_through_resize_and_label_mapping(tiny_coco):
    # 64 x 48 -> 67 x 50 (66.67 rounded): boxes x 67/64 across, x 50/48 down.
    dataset = load_coco(tiny_coco, "val", min_size=50, max_size=100)
    loader = CocoLoader(dataset, batch_size=2, train=False, workers=0)
    samples = [sample for images, targets in loader for sample in zip(images, targets)]
    detector = OracleDetector(samples).train()
    detections = collect_detections(detector, loader)
    assert detector.training
    assert sorted(detections) == list(VAL_TARGETS)
    for image_id, (boxes, labels) in VAL_TARGETS.items():
        assert_target(detections[image_id], boxes, labels)  # back in the image files' pixels
    # Every box of tiny COCO's val split is under 32^2 pixels: small, none medium or large.
    assert_metrics(evaluate_detections(dataset.coco, detections), AP=100, AP50=100, AP75=100, APs=100)
    assert math.isnan(evaluate_detections(dataset.coco, detections)["APm"])


@pytest.mark.parametrize(
    "shift, ap, ap50, ap75",
    [
        # One 10 x 10 ground-truth box at (0, 0), one detection shifted right by `shift` pixels:
        # IoU = 10 (10 - shift) / (200 - 10 (10 - shift)) = (10 - shift) / (10 + shift).
        # At an IoU threshold t <= IoU the detection matches: recall 1 at precision 1, so the 101-point
        # interpolated precision is 1 at every recall and the AP at t is 1; above IoU the detection is a
        # false positive, the AP at t 0. AP averages the 10 thresholds 0.50, 0.55, ..., 0.95:
        (0, 100, 100, 100),  # IoU 1: all 10 thresholds
        (1, 70, 100, 100),  # IoU 9/11 = 0.818: 0.50 ... 0.80, 7 thresholds
        (2, 40, 100, 0),  # IoU 8/12 = 0.667: 0.50 ... 0.65, 4 thresholds
        (5, 0, 0, 0),  # IoU 5/15 = 0.333: none
    ],
)
def test_a_shifted_box_scores_the_ap_worked_out_by_hand(shift, ap, ap50, ap75):
    metrics = evaluate_detections(ground_truth([0, 0, 10, 10]), detected([shift, 0, 10 + shift, 10]))
    # The box (area 100 < 32^2) is small: APs is AP, and no medium or large box gives APm, APl NaN.
    assert_metrics(metrics, AP=ap, AP50=ap50, AP75=ap75, APs=ap, APm=math.nan, APl=math.nan)


def test_one_of_two_boxes_found_scores_the_101_point_interpolated_ap():
    # Recall reaches 1/2 at precision 1: the interpolated precision is 1 at the recalls 0.00, 0.01, ...,
    # 0.50 (51 of the 101) and 0 above, at every IoU threshold: AP = 51 / 101.
    metrics = evaluate_detections(ground_truth([0, 0, 10, 10], [50, 50, 10, 10]), detected([0, 0, 10, 10]))
    assert_metrics(metrics, AP=5100 / 101, AP50=5100 / 101, AP75=5100 / 101)


def test_each_size_range_scores_its_own_boxes():
    # One small (20^2 < 32^2), one medium (50^2 < 96^2) and one large (120^2) box; only the medium one is
    # found, exactly. APm: its one box found, 100. APs, APl: theirs missed, 0 (the medium detection is
    # ignored there, being matched to a box outside the range). AP: recall 1/3 at precision 1, so
    # precision 1 at the recalls 0.00 ... 0.33, 34 of the 101: 34 / 101.
    truth = ground_truth([10, 10, 20, 20], [40, 40, 50, 50], [100, 100, 120, 120])
    metrics = evaluate_detections(truth, detected([40, 40, 90, 90]))
    assert_metrics(metrics, AP=3400 / 101, AP50=3400 / 101, AP75=3400 / 101, APs=0, APm=100, APl=0)


def test_no_detections_at_all_score_zero(tiny_coco):
    coco = load_coco(tiny_coco, "val").coco
    nothing = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    for detections in ({image_id: nothing for image_id in VAL_TARGETS}, {}):
        assert_metrics(evaluate_detections(coco, detections), AP=0, AP50=0, AP75=0, APs=0, APm=math.nan)


def test_only_the_images_of_the_detections_are_scored(tiny_coco):
    coco = load_coco(tiny_coco, "val").coco
    boxes, labels = VAL_TARGETS[22]
    found = {22: {"boxes": torch.tensor(boxes), "scores": torch.ones(1), "labels": torch.tensor(labels)}}
    assert evaluate_detections(coco, found)["AP"] == pytest.approx(100)
    with pytest.raises(DataFormatError, match="image ids the annotation file does not list: 99"):
        evaluate_detections(coco, {99: found[22]})


def test_a_torchvision_detector_trains_on_the_batches_and_gets_evaluated(tiny_coco):
    """The format contract with a real torchvision detector, built with the dataset's min_size and max_size."""
    torch.manual_seed(0)
    train = load_coco(tiny_coco, "train", **NATIVE)
    detector = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=train.categories.num_classes, **NATIVE
    )
    for images, targets in CocoLoader(train, batch_size=2, train=True, workers=0):
        losses = detector(images, targets)
        assert all(torch.isfinite(loss) for loss in losses.values())
    val = load_coco(tiny_coco, "val", **NATIVE)
    detections = collect_detections(detector, CocoLoader(val, batch_size=2, train=False, workers=0))
    assert sorted(detections) == list(VAL_TARGETS) and detector.training
    metrics = evaluate_detections(val.coco, detections)
    assert all(0 <= metrics[name] <= 100 for name in ("AP", "AP50", "AP75", "APs"))
