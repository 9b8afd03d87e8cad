"""COCO box AP of torchvision-style detections, computed by pycocotools' COCOeval, and a detector's detections.

Detections are a mapping image id -> {"boxes": float (N, 4) x1, y1, x2, y2 in pixels of the image
file, "scores": (N,), "labels": int64 (N,) famkd's contiguous labels (see famkd.detection.coco)}. Its
keys are the images evaluated: an image the detector saw and found nothing in is a key with empty
tensors, and an evaluation over part of a split is scored on that part.

`evaluate_detections` turns them into COCO results (boxes as [x, y, w, h], labels mapped back to
category ids) and runs COCOeval with iouType "bbox": AP averaged over the IoU thresholds 0.50:0.05:0.95
and the categories, each AP the mean of the precision interpolated at the 101 recalls 0:0.01:1, up to
100 detections per image; crowd regions of the annotation file count as areas whose detections are
ignored. `collect_detections` runs a detector over a `CocoLoader` and maps its boxes back to the image
files' pixels, undoing the loader's resize.

Several processes each collect the detections of their share of the images; merge their mappings
(e.g. with torch.distributed.all_gather_object) and evaluate once.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn

from famkd.data.datasets import DataFormatError
from famkd.detection.coco import Batch, CocoCategories
from famkd.errors import shown

# The first six of COCOeval.stats, in its order: AP at IoU 0.50:0.95, at 0.50, at 0.75, then AP at
# 0.50:0.95 of the small (area < 32^2), medium (< 96^2) and large objects.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

Detections = Mapping[int, Mapping[str, Tensor]]


def coco_results(detections: Detections, categories: CocoCategories) -> list[dict[str, Any]]:
    """COCO's result format: one {"image_id", "category_id", "bbox": [x, y, w, h], "score"} per box."""
    results: list[dict[str, Any]] = []
    for image_id, output in detections.items():
        boxes = output["boxes"].detach().cpu().double()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        category_ids = categories.category_ids(output["labels"])
        scores = output["scores"].detach().cpu().double()
        results.extend(
            {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}
            for box, score, category_id in zip(xywh.tolist(), scores.tolist(), category_ids.tolist())
        )
    return results


def evaluate_detections(coco_gt: COCO, detections: Detections) -> dict[str, float]:
    """COCO box AP in percent, keyed by METRICS, of `detections` (see the module docstring) on the images they key.

    An empty mapping scores every image of `coco_gt`, with no detections: AP 0. A metric is NaN where
    the images evaluated hold no ground-truth box to score (e.g. APl without large objects), as in
    Detectron2's COCOEvaluator.
    """
    unknown = sorted(set(detections) - set(coco_gt.getImgIds()))
    if unknown:
        raise DataFormatError(
            f"detections for image ids the annotation file does not list: {shown(list(map(str, unknown)))}; "
            "evaluate against the annotation file of the split the detections were made on"
        )
    results = coco_results(detections, CocoCategories.from_coco(coco_gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results) if results else _no_results()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(detections) or coco_gt.getImgIds()
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: 100 * float(value) if value >= 0 else math.nan for name, value in zip(METRICS, evaluator.stats)}


def _no_results() -> COCO:
    """A results set without any detection (pycocotools' loadRes fails on an empty list)."""
    results = COCO()
    results.dataset = {"annotations": []}
    results.createIndex()
    return results


def boxes_in_file_pixels(boxes: Tensor, image_size: tuple[int, int], file_size: tuple[int, int]) -> Tensor:
    """xyxy `boxes` in pixels of an image of image_size (height, width), scaled to one of file_size, on the CPU."""
    (height, width), (file_height, file_width) = image_size, file_size
    return boxes.detach().cpu().float() * torch.tensor([file_width / width, file_height / height] * 2)


def collect_detections(model: nn.Module, batches: Iterable[Batch]) -> dict[int, dict[str, Tensor]]:
    """The detections (see the module docstring) of `model` on `batches`, e.g. a `CocoLoader` with train=False.

    The model runs in eval mode under no_grad on the device of its parameters, takes a list of images
    and returns one {"boxes", "scores", "labels"} per image in the pixels of the image it was given, as
    torchvision's detectors do; its mode is restored afterwards. The boxes are mapped to the image
    file's size (`orig_size` of the targets), on the CPU.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    detections = {}
    try:
        with torch.no_grad():
            for images, targets in batches:
                outputs = model([image.to(device, non_blocking=True) for image in images])
                for image, target, output in zip(images, targets, outputs):
                    height, width = image.shape[-2:]
                    file_height, file_width = target["orig_size"].tolist()
                    detections[int(target["image_id"])] = {
                        "boxes": boxes_in_file_pixels(output["boxes"], (height, width), (file_height, file_width)),
                        "scores": output["scores"].detach().cpu(),
                        "labels": output["labels"].detach().cpu(),
                    }
    finally:
        model.train(was_training)
    return detections
