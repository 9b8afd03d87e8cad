"""Test-set evaluation: top-1, top-5 and mean cross-entropy, with one host sync per evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from famkd.config import config_from_dict
from famkd.data import LoaderSettings, build_datasets, build_loader, data_options, dataset_image_size
from famkd.engine.device import resolve_device
from famkd.engine.distributed import all_reduce_sum
from famkd.engine.run_dir import RunDir
from famkd.weights import load_checkpoint, model_from_checkpoint


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """Number of samples whose label is among the k highest logits, for each k (a float tensor, len(ks)).

    k larger than the number of classes counts every sample as correct.
    """
    largest_k = min(max(ks), logits.shape[1])
    ranked = logits.topk(largest_k, dim=1).indices
    hits = ranked.eq(labels.unsqueeze(1))
    return torch.stack([hits[:, : min(k, largest_k)].any(dim=1).sum() for k in ks]).float()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, ...]],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    description: str | None = None,
) -> dict[str, float]:
    """Evaluate `model` (called as model(images) -> logits) on every batch of `loader`.

    Returns {"top1", "top5"} in percent, {"loss"}, the mean cross-entropy per image, and {"images"}, the
    number of images evaluated; under several training processes each evaluates its part of the test set
    and the counts are summed, so the numbers cover the whole set once.
    The model's train/eval mode is restored afterwards. With `description`, a progress bar named
    so shows on a terminal (none in logs or pipes); it disappears when the evaluation ends.
    """
    was_training = model.training
    model.eval()
    totals = None
    batches = tqdm(loader, desc=description, unit="batch", leave=False, disable=None if description else True)
    for images, labels, *_ in batches:
        with autocast():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum").reshape(1)
        count = torch.full((1,), labels.shape[0], dtype=torch.float32, device=labels.device)
        batch = torch.cat([topk_correct(logits, labels), loss, count])
        totals = batch if totals is None else totals + batch
    model.train(was_training)
    if totals is None:  # this process's part of the test set is empty (more processes than batches)
        totals = torch.zeros(4, device=next(model.parameters(), torch.zeros(())).device)
    top1_hits, top5_hits, loss_sum, seen = all_reduce_sum(totals).tolist()
    if not seen:
        raise ValueError("evaluation loader yielded no batches")
    return {
        "top1": 100.0 * top1_hits / seen,
        "top5": 100.0 * top5_hits / seen,
        "loss": loss_sum / seen,
        "images": int(seen),
    }


def evaluate_checkpoint(
    path: str,
    data_root: str = "",
    model_name: str = "",
    device: str = "auto",
    batch_size: int = 256,
) -> dict[str, Any]:
    """Top-1/top-5 of the model in a checkpoint on its dataset's test split (CIFAR-100 by default).

    `path` is a famkd run directory (its checkpoints/best.pt is used), a famkd checkpoint (the
    architecture and dataset come from its stored config), an exported student or a community
    {"model": state_dict} file (these two need `model_name`). `data_root` overrides where the data
    is read from. Returns {"top1", "top5", "loss", "arch", "checkpoint", "data"}.
    """
    checkpoint_path = Path(path)
    if checkpoint_path.is_dir():
        checkpoint_path = RunDir(checkpoint_path).checkpoint(best=True)
    checkpoint = load_checkpoint(checkpoint_path)
    if isinstance(checkpoint.get("config"), dict):
        data_cfg = config_from_dict(checkpoint["config"]).data
        if data_root:
            data_cfg.root = data_root
    else:
        data_cfg = data_options("cifar100", root=data_root)
    _, test_set = build_datasets(data_cfg)
    model, arch = model_from_checkpoint(
        checkpoint, checkpoint_path, model_name, test_set.num_classes, image_size=dataset_image_size(data_cfg)
    )
    target = resolve_device(device)
    loader = build_loader(test_set, data_cfg, batch_size, False, LoaderSettings(device=target))
    result = evaluate(model.to(target), loader, description="test")
    return {**result, "arch": arch, "checkpoint": str(checkpoint_path), "data": test_set.description}
