"""Detectron2 model-zoo Faster R-CNN checkpoints imported into torchvision compute what Detectron2 computes.

The reference below is Detectron2's inference written out literally with torch.nn.functional from
the checkpoint's own numpy arrays (BGR 0-255 input minus PIXEL_MEAN, stride in the 1x1 conv,
FrozenBN, FPN with nearest top-down upsampling and LastLevelMaxPool, StandardRPNHead, ROIAlignV2
pooling and the two-fc box head, fast_rcnn_inference). The imported model runs in float64, so both
agree to rounding. The checkpoints are synthetic (tests/detectron2_layout.py): Detectron2's exact
names and shapes with random values.
"""

from __future__ import annotations

import builtins
import codecs
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d, batched_nms, roi_align

from detectron2_layout import (
    BLOCKS,
    detectron2_shapes,
    random_detectron2_weights,
    write_detectron2_pickle,
    zero_detectron2_weights,
)
from famkd.detection.detectron2_import import (
    COCO_CATEGORY_IDS,
    Detectron2Spec,
    build_faster_rcnn,
    coco_category_id,
    convert_detectron2_weights,
    detectron2_key_map,
    import_detectron2_faster_rcnn,
    load_detectron2_weights,
    model_weights,
)
from famkd.errors import ConfigError, FamkdError
from famkd.weights.safe_pickle import RefusedPickleError, load_numpy_pickle

HEIGHT, WIDTH = 96, 64  # padded P6 is 2 x 1: torchvision's inferred P6 stride would be 96 // 2 = 48, not 64
TOY_SPEC = Detectron2Spec(min_size=WIDTH, max_size=HEIGHT)  # the toy image is not resized
BGR_MEAN = torch.tensor([103.530, 116.280, 123.675], dtype=torch.float64)
PROPOSALS = torch.tensor(
    [
        [2.0, 3.0, 30.0, 40.0],  # P2
        [0.0, 0.0, 64.0, 96.0],  # P2
        [10.0, 10.0, 10.0 + 111.9999776, 10.0 + 111.9999776],  # P2 by Detectron2's rule, P3 by torchvision's
        [-20.0, -10.0, 100.0, 120.0],  # P3
        [-100.0, -80.0, 150.0, 170.0],  # P4
        [-250.0, -200.0, 260.0, 300.0],  # P5
        [5.5, 7.25, 7.75, 60.5],  # under one P2 pixel wide: aligned=False would widen it to one
    ],
    dtype=torch.float64,
)


# Detectron2's forward, written out literally.


def frozen_bn(x: Tensor, w: dict[str, Tensor], name: str) -> Tensor:
    stats = (w[f"{name}.norm.running_mean"], w[f"{name}.norm.running_var"])
    return F.batch_norm(x, *stats, w[f"{name}.norm.weight"], w[f"{name}.norm.bias"], training=False, eps=1e-5)


def conv_bn(x: Tensor, w: dict[str, Tensor], name: str, stride: int = 1, padding: int = 0) -> Tensor:
    return frozen_bn(F.conv2d(x, w[f"{name}.weight"], stride=stride, padding=padding), w, name)


def conv(x: Tensor, w: dict[str, Tensor], name: str, padding: int = 0) -> Tensor:
    return F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"], padding=padding)


def bottleneck(x: Tensor, w: dict[str, Tensor], name: str, stride: int) -> Tensor:
    shortcut = conv_bn(x, w, f"{name}.shortcut", stride) if f"{name}.shortcut.weight" in w else x
    out = F.relu(conv_bn(x, w, f"{name}.conv1", stride))  # STRIDE_IN_1X1: the stride is in the 1x1
    out = F.relu(conv_bn(out, w, f"{name}.conv2", padding=1))
    return F.relu(conv_bn(out, w, f"{name}.conv3") + shortcut)


def detectron2_features(image: Tensor, w: dict[str, Tensor], depth: int = 50) -> list[Tensor]:
    """P2..P6 of Detectron2's ResNet-FPN for one normalised BGR image."""
    x = F.relu(conv_bn(image[None], w, "backbone.bottom_up.stem.conv1", stride=2, padding=3))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    stages = {}
    for stage, blocks in zip(range(2, 6), BLOCKS[depth]):
        for block in range(blocks):
            x = bottleneck(x, w, f"backbone.bottom_up.res{stage}.{block}", 2 if block == 0 and stage > 2 else 1)
        stages[stage] = x
    top_down = conv(stages[5], w, "backbone.fpn_lateral5")
    outputs = {5: conv(top_down, w, "backbone.fpn_output5", padding=1)}
    for stage in (4, 3, 2):
        upsampled = F.interpolate(top_down, scale_factor=2.0, mode="nearest")
        top_down = conv(stages[stage], w, f"backbone.fpn_lateral{stage}") + upsampled
        outputs[stage] = conv(top_down, w, f"backbone.fpn_output{stage}", padding=1)
    outputs[6] = F.max_pool2d(outputs[5], kernel_size=1, stride=2, padding=0)
    return [outputs[level] for level in range(2, 7)]


def detectron2_rpn_head(features: list[Tensor], w: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    hidden = [F.relu(conv(x, w, "proposal_generator.rpn_head.conv", padding=1)) for x in features]
    objectness = [conv(x, w, "proposal_generator.rpn_head.objectness_logits") for x in hidden]
    deltas = [conv(x, w, "proposal_generator.rpn_head.anchor_deltas") for x in hidden]
    return objectness, deltas


def detectron2_box_head(features: list[Tensor], boxes: Tensor, w: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """ROIAlignV2 pooling box by box on its FPN level, fc1, fc2, then (pooled, class scores, box deltas)."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(4 + torch.log2(sizes / 224 + 1e-8)).clamp(2, 5).long()
    pooled = torch.cat(
        [
            roi_align(features[level - 2], [box[None]], 7, 1 / 2**level, sampling_ratio=0, aligned=True)
            for box, level in zip(boxes, levels.tolist())
        ]
    )
    hidden = F.relu(F.linear(pooled.flatten(1), w["roi_heads.box_head.fc1.weight"], w["roi_heads.box_head.fc1.bias"]))
    hidden = F.relu(F.linear(hidden, w["roi_heads.box_head.fc2.weight"], w["roi_heads.box_head.fc2.bias"]))
    scores = F.linear(
        hidden, w["roi_heads.box_predictor.cls_score.weight"], w["roi_heads.box_predictor.cls_score.bias"]
    )
    deltas = F.linear(
        hidden, w["roi_heads.box_predictor.bbox_pred.weight"], w["roi_heads.box_predictor.bbox_pred.bias"]
    )
    return pooled, scores, deltas


def detectron2_decode(deltas: Tensor, boxes: Tensor, weights: tuple[float, ...]) -> Tensor:
    """Box2BoxTransform.apply_deltas: (N, K*4) deltas on (N, 4) boxes."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    centre_x, centre_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    dx, dy = deltas[:, 0::4] / weights[0], deltas[:, 1::4] / weights[1]
    clamp = np.log(1000.0 / 16)
    dw, dh = (deltas[:, 2::4] / weights[2]).clamp(max=clamp), (deltas[:, 3::4] / weights[3]).clamp(max=clamp)
    x, y = dx * widths[:, None] + centre_x[:, None], dy * heights[:, None] + centre_y[:, None]
    w, h = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=2).reshape(len(boxes), -1)


def detectron2_inference(scores: Tensor, deltas: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """fast_rcnn_inference for one image: boxes, scores and contiguous classes (0..79) of the detections."""
    probabilities = F.softmax(scores, dim=-1)[:, :-1]  # background is the last column
    predicted = detectron2_decode(deltas, boxes, (10.0, 10.0, 5.0, 5.0)).view(len(boxes), -1, 4)
    predicted[..., 0::2] = predicted[..., 0::2].clamp(0, WIDTH)
    predicted[..., 1::2] = predicted[..., 1::2].clamp(0, HEIGHT)
    chosen = probabilities > 0.05
    box_index, classes = chosen.nonzero(as_tuple=True)
    kept = batched_nms(predicted[chosen], probabilities[chosen], classes, 0.5)[:100]
    return predicted[chosen][kept], probabilities[chosen][kept], classes[kept]


# Fixtures: one synthetic R-50-FPN checkpoint, its import (float64) and the reference computed from it.


@pytest.fixture(scope="module")
def numpy_weights() -> dict[str, np.ndarray]:
    return random_detectron2_weights(50, seed=0)


@pytest.fixture(scope="module")
def weights64(numpy_weights) -> dict[str, Tensor]:
    return {name: torch.from_numpy(value).double() for name, value in numpy_weights.items()}


@pytest.fixture(scope="module")
def model(numpy_weights):
    return import_detectron2_faster_rcnn(numpy_weights, TOY_SPEC).double()


@pytest.fixture(scope="module")
def rgb_image() -> Tensor:
    """A torchvision-style image: RGB, values in [0, 1]."""
    return torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture(scope="module")
def detectron2_image(rgb_image) -> Tensor:
    """The same image as Detectron2 sees it: BGR in [0, 255], minus PIXEL_MEAN, over PIXEL_STD (1)."""
    return 255 * rgb_image.flip(0) - BGR_MEAN[:, None, None]


@pytest.fixture(scope="module")
def model_features(model, rgb_image) -> tuple[ImageList, list[Tensor]]:
    with torch.no_grad():
        images, _ = model.transform([rgb_image])
        return images, list(model.backbone(images.tensors).values())


@pytest.fixture(scope="module")
def reference_features(detectron2_image, weights64) -> list[Tensor]:
    return detectron2_features(detectron2_image, weights64)


def assert_close(actual: Tensor, expected: Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))


# Keys.


@pytest.mark.parametrize("depth", [50, 101])
def test_every_detectron2_weight_fills_every_torchvision_weight(depth):
    weights = zero_detectron2_weights(depth)
    key_map = detectron2_key_map(depth)
    assert set(key_map) == set(detectron2_shapes(depth))
    imported = import_detectron2_faster_rcnn(weights, Detectron2Spec(depth=depth))  # strict load
    assert set(key_map.values()) == set(imported.state_dict())


def test_unmapped_and_missing_keys_are_listed():
    weights = zero_detectron2_weights(50)
    weights["roi_heads.mask_head.mask_fcn1.weight"] = np.zeros((256, 256, 3, 3), np.float32)
    del weights["backbone.fpn_output3.bias"]
    with pytest.raises(FamkdError, match=r"unmapped: roi_heads\.mask_head\.mask_fcn1\.weight.*missing: backbone\.fpn"):
        import_detectron2_faster_rcnn(weights)


def test_wrong_depth_is_reported():
    with pytest.raises(FamkdError, match=r"R-101-FPN \(missing: backbone\.bottom_up\.res4\.10\..*depth"):
        import_detectron2_faster_rcnn(zero_detectron2_weights(50), Detectron2Spec(depth=101))


def test_wrong_class_count_is_reported():
    with pytest.raises(FamkdError, match="81 class scores and 320 box outputs; 20 classes need 21 and 80"):
        convert_detectron2_weights(model_weights(zero_detectron2_weights(50)), Detectron2Spec(num_classes=20))


def test_buffers_of_older_checkpoints_are_checked_and_dropped():
    weights = model_weights(zero_detectron2_weights(50))
    weights["pixel_mean"] = torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1)
    weights["pixel_std"] = torch.ones(3, 1, 1)
    weights["proposal_generator.anchor_generator.cell_anchors.0"] = torch.tensor(
        [
            [-22.627417, -11.313708, 22.627417, 11.313708],
            [-16.0, -16.0, 16.0, 16.0],
            [-11.313708, -22.627417, 11.313708, 22.627417],
        ]
    )
    converted = convert_detectron2_weights(weights)
    assert set(converted) == set(detectron2_key_map(50).values())
    weights["pixel_std"] = torch.tensor([57.375, 57.12, 58.395]).view(3, 1, 1)
    with pytest.raises(FamkdError, match=r"pixel_std is \[57\.375.*pixel_mean/pixel_std"):
        convert_detectron2_weights(weights)


def test_spec_rejects_unsupported_settings():
    with pytest.raises(ConfigError, match="depth"):
        Detectron2Spec(depth=34)
    with pytest.raises(ConfigError, match="input_format"):
        Detectron2Spec(input_format="rgb")


# Each documented difference.


def test_stride_sits_in_the_first_1x1_conv(model):
    for layer in (model.backbone.body.layer2, model.backbone.body.layer3, model.backbone.body.layer4):
        assert layer[0].conv1.stride == (2, 2) and layer[0].conv2.stride == (1, 1)
    torchvision_layout = build_faster_rcnn(Detectron2Spec(stride_in_1x1=False))
    assert torchvision_layout.backbone.body.layer2[0].conv2.stride == (2, 2)


def test_frozen_batch_norm_has_detectron2_eps(model):
    frozen = [module for module in model.modules() if isinstance(module, FrozenBatchNorm2d)]
    assert len(frozen) == 1 + 3 * sum(BLOCKS[50]) + 4 and all(norm.eps == 1e-5 for norm in frozen)
    assert not any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())


def test_box_coders_use_detectron2_weights(model):
    assert model.rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert model.roi_heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)


def test_transform_gives_detectron2_input_in_rgb_order(model_features, detectron2_image, numpy_weights, model):
    images, _ = model_features
    assert images.image_sizes == [(HEIGHT, WIDTH)]
    assert_close(images.tensors[0], detectron2_image.flip(0))
    stem = torch.from_numpy(numpy_weights["backbone.bottom_up.stem.conv1.weight"]).double()
    assert torch.equal(model.backbone.body.conv1.weight, stem[:, [2, 1, 0]])


def test_rgb_models_keep_their_stem_and_channel_order():
    spec = Detectron2Spec(input_format="RGB", pixel_mean=(123.675, 116.28, 103.53), pixel_std=(58.395, 57.12, 57.375))
    assert spec.image_mean_std() == (pytest.approx([0.485, 0.456, 0.406]), pytest.approx([0.229, 0.224, 0.225]))
    weights = model_weights(zero_detectron2_weights(50))
    weights["backbone.bottom_up.stem.conv1.weight"] = torch.arange(64 * 3 * 49.0).view(64, 3, 7, 7)
    converted = convert_detectron2_weights(weights, spec)
    assert torch.equal(converted["backbone.body.conv1.weight"], weights["backbone.bottom_up.stem.conv1.weight"])


def test_backbone_and_fpn_match_detectron2(model_features, reference_features):
    _, features = model_features
    assert len(features) == 5
    for actual, expected in zip(features, reference_features):
        assert_close(actual, expected)


def test_rpn_head_matches_detectron2(model, model_features, reference_features, weights64):
    with torch.no_grad():
        objectness, deltas = model.rpn.head(model_features[1])
    expected_objectness, expected_deltas = detectron2_rpn_head(reference_features, weights64)
    for actual, expected in zip(objectness + deltas, expected_objectness + expected_deltas):
        assert_close(actual, expected)


def test_anchors_match_detectron2(model, model_features):
    images, features = model_features
    anchors = model.rpn.anchor_generator(images, features)[0]
    expected = []
    for feature, size, stride in zip(features, (32, 64, 128, 256, 512), (4, 8, 16, 32, 64)):
        cell = torch.tensor([[-w / 2, -h / 2, w / 2, h / 2] for w, h in ((size * 2**0.5, size / 2**0.5), (size, size))])
        cell = torch.cat([cell, cell[:1, [1, 0, 3, 2]]])  # ratio 2: the ratio 0.5 anchor transposed
        ys, xs = torch.meshgrid(
            torch.arange(feature.shape[2]) * stride, torch.arange(feature.shape[3]) * stride, indexing="ij"
        )
        shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
        expected.append((shifts + cell[None]).reshape(-1, 4))
    assert features[-1].shape[-2:] == (2, 1)
    torch.testing.assert_close(anchors.float(), torch.cat(expected).float(), rtol=0, atol=1e-4)


def test_box_head_matches_detectron2_with_background_first(model, model_features, reference_features, weights64):
    images, features = model_features
    feature_dict = dict(zip(["0", "1", "2", "3", "pool"], features))
    with torch.no_grad():
        pooled = model.roi_heads.box_roi_pool(feature_dict, [PROPOSALS], images.image_sizes)
        scores, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    expected_pooled, expected_scores, expected_deltas = detectron2_box_head(reference_features, PROPOSALS, weights64)
    assert_close(pooled, expected_pooled)
    assert_close(scores[:, 0], expected_scores[:, 80])  # background
    assert_close(scores[:, 1:], expected_scores[:, :80])  # label l is Detectron2's class l - 1
    assert torch.equal(deltas[:, :4], torch.zeros(len(PROPOSALS), 4, dtype=deltas.dtype))
    assert_close(deltas[:, 4:], expected_deltas)


def test_detections_from_given_proposals_match_detectron2(model, model_features, reference_features, weights64):
    images, features = model_features
    feature_dict = dict(zip(["0", "1", "2", "3", "pool"], features))
    with torch.no_grad():
        detections = model.roi_heads(feature_dict, [PROPOSALS], images.image_sizes)[0][0]
    _, scores, deltas = detectron2_box_head(reference_features, PROPOSALS, weights64)
    boxes, probabilities, classes = detectron2_inference(scores, deltas, PROPOSALS)
    # The one difference left (docs/detection.md): torchvision drops boxes under 1e-2 px a side, here
    # boxes clipped to nothing; they overlap nothing, so they never suppressed another box in the NMS.
    kept = ((boxes[:, 2] - boxes[:, 0]) >= 1e-2) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-2)
    assert 0 < kept.sum() < len(kept)
    boxes, probabilities, classes = boxes[kept], probabilities[kept], classes[kept]
    assert_close(detections["scores"], probabilities)
    assert torch.equal(detections["labels"], classes + 1)
    assert_close(detections["boxes"], boxes)


def test_whole_model_runs_on_an_image(model, rgb_image):
    with torch.no_grad():
        (detections,) = model([rgb_image])
    assert detections["labels"].min() >= 1 and detections["labels"].max() <= 80
    assert detections["boxes"].shape == (len(detections["labels"]), 4)


def test_coco_category_ids():
    unused = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert tuple(sorted(set(range(1, 91)) - unused)) == COCO_CATEGORY_IDS
    assert [coco_category_id(label) for label in (1, 12, 80)] == [1, 13, 90]
    assert [coco_category_id(label) for label in range(1, 81)] == list(COCO_CATEGORY_IDS)
    for bad in (0, 81):
        with pytest.raises(FamkdError):
            coco_category_id(bad)


# Reading checkpoint files.


def test_import_from_a_model_zoo_pickle(tmp_path, numpy_weights, model):
    path = write_detectron2_pickle(tmp_path / "model_final.pkl", numpy_weights)
    imported = import_detectron2_faster_rcnn(path, TOY_SPEC).double()
    for key, value in model.state_dict().items():
        assert torch.equal(imported.state_dict()[key], value), key


class Python2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 wrote its byte strings (BINSTRING), as in Detectron/Caffe2 files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_byte_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)

    dispatch[str] = save_byte_string
    dispatch[bytes] = save_byte_string


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
    checkpoint = {"model": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, "step": np.int64(7), "raw": b"\x00\xff"}
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(checkpoint, protocol=protocol))
    loaded = load_numpy_pickle(path)
    assert np.array_equal(loaded["model"]["a"], checkpoint["model"]["a"]) and loaded["step"] == 7
    assert loaded["raw"] == b"\x00\xff"


def test_python2_numpy1_pickles_load(tmp_path):
    array = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump({"model": {"conv1_w": array}})
    data = buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in data and pickle.BINUNICODE not in data
    path = tmp_path / "R-50.pkl"
    path.write_bytes(data)
    assert np.array_equal(load_numpy_pickle(path)["model"]["conv1_w"], array)


def test_detectron2_training_checkpoints_load_without_pickle(tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"a": torch.ones(2)}, "iteration": 5}, path)
    assert torch.equal(load_detectron2_weights(path)["a"], torch.ones(2))


class RunsCode:
    """An object whose unpickling would call `function(*arguments)`."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


@pytest.mark.parametrize(
    ("refused", "payload"),
    [
        (f"{os.system.__module__}.system", lambda marker: RunsCode(os.system, f"touch {marker}")),
        ("subprocess.call", lambda marker: RunsCode(subprocess.call, ["touch", str(marker)])),
        ("builtins.eval", lambda marker: RunsCode(builtins.eval, f"open({str(marker)!r}, 'w').close()")),
    ],
)
def test_pickles_that_run_code_are_refused(tmp_path, refused, payload):
    marker = tmp_path / "ran"
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": {"a": np.zeros(1), "b": payload(marker)}, "__author__": "x"}))
    with pytest.raises(RefusedPickleError, match=rf"{refused}, which is not a numpy array.*never runs code"):
        import_detectron2_faster_rcnn(path)
    assert not marker.exists()


def test_refused_modules_are_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "sneaky_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nvalue = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "weights.pkl"
    path.write_bytes(b"\x80\x02csneaky_module\nvalue\n.")
    with pytest.raises(RefusedPickleError, match="sneaky_module.value"):
        load_numpy_pickle(path)
    assert not marker.exists() and "sneaky_module" not in sys.modules


def test_only_latin1_byte_strings_are_rebuilt(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(RunsCode(codecs.encode, "payload", "rot13"), protocol=2))
    with pytest.raises(RefusedPickleError, match="'rot13' codec"):
        load_numpy_pickle(path)


def test_files_that_are_not_pickles_are_reported(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(FamkdError, match="cannot read .* as a pickle of numpy arrays"):
        load_numpy_pickle(path)
    with pytest.raises(FamkdError, match="checkpoint not found"):
        load_numpy_pickle(tmp_path / "missing.pkl")
