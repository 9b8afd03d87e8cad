"""Classification as the engine sees it (famkd.engine.task): data, distiller, step arguments, metrics, summary."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from famkd.classification.evaluation import evaluate
from famkd.classification.fam_log import fam_epoch_log
from famkd.config import Config, config_with_overrides
from famkd.data import LoaderSettings, build_datasets, build_loader, dataset_image_size
from famkd.distill import Distiller, create_distiller, needs_teacher
from famkd.distill.registry import distiller_class
from famkd.engine.distributed import Processes
from famkd.engine.progress import RunState
from famkd.engine.run_dir import RunDir, timestamped_run_dir
from famkd.engine.task import Autocast, Task, TaskData
from famkd.engine.trainer import train as train_task
from famkd.errors import FamkdError
from famkd.models import create_model
from famkd.models.external import is_external
from famkd.weights import TORCHVISION_PREFIX, load_teacher_and_name
from famkd.weights.zoo import load_student_init

COMMUNITY_TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints"


class ClassificationTask(Task):
    """Images and labels; the distiller's outputs are the student's logits; top-1 is the main metric."""

    name = "classification"
    command = "famkd train"
    main_metric = "test_acc"

    def config_with_overrides(self, values: dict, overrides: Iterable[str]) -> Config:
        return config_with_overrides(values, overrides)

    def default_run_dir(self, cfg: Config) -> str:
        """runs/<method>/<teacher>_<student>-<timestamp> (runs/vanilla/<student>-<timestamp> for teachers)."""
        distils = needs_teacher(cfg.method) and cfg.teacher.name
        return timestamped_run_dir(cfg.method, f"{cfg.teacher.name}_{cfg.student}" if distils else cfg.student)

    def check(self, cfg: Config) -> None:
        if needs_teacher(cfg.method) and not cfg.teacher.checkpoint:
            raise FamkdError(missing_teacher_message(cfg))

    def build_data(self, cfg: Config, processes: Processes, device: torch.device) -> TaskData:
        train_set, test_set = build_datasets(cfg.data)
        settings = LoaderSettings(
            seed=cfg.run.seed,
            device=device,
            channels_last=cfg.train.channels_last,
            num_replicas=processes.world_size,
            rank=processes.rank,
        )
        with_indices = distiller_class(cfg.method).needs_sample_indices
        batch = processes.batch_share(cfg.train.batch_size)
        train_settings = LoaderSettings(
            **{**vars(settings), "with_indices": with_indices, "max_steps": cfg.train.max_steps_per_epoch}
        )
        train_loader = build_loader(train_set, cfg.data, batch, True, train_settings)
        if len(train_loader) == 0:
            raise FamkdError(
                f"no full training batch: {len(train_set.labels)} training images, "
                f"train.batch_size={cfg.train.batch_size}; lower train.batch_size or use more data"
            )
        test_loader = build_loader(test_set, cfg.data, cfg.train.eval_batch_size, False, settings)
        lines = [f"train data: {train_set.description}", f"test data: {test_set.description}"]
        return TaskData(train_loader, test_loader, train_set, lines, train_set.description)

    def build_distiller(self, cfg: Config, data: TaskData, resumed: bool) -> Distiller:
        num_classes = data.train_set.num_classes
        image_size = dataset_image_size(cfg.data)
        student = create_model(cfg.student, num_classes=num_classes, image_size=image_size)
        if cfg.student_init and not resumed:
            data.lines.append(load_student_init(student, cfg.student_init))
        teacher = None
        if needs_teacher(cfg.method):
            teacher, cfg.teacher.name = load_teacher_and_name(cfg.teacher, num_classes, image_size)
        return create_distiller(
            cfg.method,
            student=student,
            teacher=teacher,
            image_size=image_size or 0,
            num_samples=len(data.train_set),
            labels=data.train_set.labels,
            student_taps=cfg.student_taps,
            teacher_taps=cfg.teacher_taps,
            **cfg.distill,
        )

    def step_arguments(self, batch: tuple[Tensor, ...], position: int) -> tuple[tuple[Any, ...], int]:
        images, labels, *indices = batch
        return (images, labels, position, *indices), labels.shape[0]

    def train_counts(self, outputs: Tensor, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        return {"correct": (outputs.detach().argmax(dim=1) == batch[1]).sum()}

    def train_metrics(self, counts: dict[str, float], images: float) -> dict[str, float]:
        return {"train_acc": 100.0 * counts["correct"] / images}

    def evaluate(self, cfg: Config, distiller: Distiller, data: TaskData, autocast: Autocast) -> dict[str, Any]:
        result = evaluate(distiller.student, data.eval_source, autocast, description="test")
        return {
            "test_acc": result["top1"],
            "test_top5": result["top5"],
            "test_loss": result["loss"],
            "test_images": result["images"],
        }

    def evaluate_teacher(
        self, cfg: Config, distiller: Distiller, data: TaskData, autocast: Autocast, say: Callable[[str], None]
    ) -> dict[str, Any]:
        test_images = len(data.eval_source.dataset)
        say(f"measuring the teacher's test accuracy on {test_images} images before training ...")
        result = evaluate(distiller.teacher, data.eval_source, autocast, description="teacher test")
        top1, top5 = result["top1"], result["top5"]
        say(f"teacher test accuracy: top-1 {top1:.2f}%, top-5 {top5:.2f}% ({result['images']} images)")
        return {"top1": result["top1"], "top5": result["top5"]}

    def metric_text(self, record: dict[str, Any]) -> str:
        text = f"train {record['train_acc']:.2f}%  "
        if "test_acc" in record:
            text += f"test {record['test_acc']:.2f}% (top-5 {record['test_top5']:.2f}%)  "
        return text

    def epoch_extras(
        self, cfg: Config, distiller: Distiller, data: TaskData, run_dir: RunDir, epoch: int, main: bool
    ) -> dict[str, Any]:
        return fam_epoch_log(distiller, data.eval_source, run_dir, cfg, epoch, main)

    def summary(self, cfg: Config, state: RunState, data: TaskData) -> dict[str, Any]:
        teacher = state.teacher_eval or {}
        return {
            "best_acc": state.best,
            "last_acc": state.last_eval.get("test_acc"),
            "best_epoch": state.best_at or None,
            "epochs_completed": state.epoch,
            "epochs": cfg.train.epochs,
            "teacher_acc": teacher.get("top1"),
            "dataset": data.description,
        }

    def student_card(self, cfg: Config, train_set: Any) -> dict[str, Any]:
        return {
            "task": self.name,
            "arch": cfg.student,
            "num_classes": train_set.num_classes,
            "class_names": list(train_set.class_names),
            "input_size": dataset_image_size(cfg.data),
            "resize": getattr(cfg.data, "resize_size", None),  # ImageNet-style: shorter side, then a centre crop
            "channel_order": "RGB",
            "mean": list(train_set.mean),  # of pixel / 255
            "std": list(train_set.std),
            "dataset": cfg.data.dataset,
        }

    def done_line(self, summary: dict[str, Any]) -> str:
        return (
            f"done: best top-1 {summary['best_acc']:.2f}% (epoch {summary['best_epoch']}), "
            f"last {summary['last_acc']:.2f}%, {summary['wall_time_s']:.0f} s; run dir {summary['run_dir']}"
        )


TASK = ClassificationTask()
train = partial(train_task, TASK)  # train(cfg | None, resume_dir=None, *, overrides=(), on_step=None) -> summary


def missing_teacher_message(cfg: Config) -> str:
    """What to pass as teacher.checkpoint, for the run's dataset and teacher."""
    teacher = cfg.teacher.name or "<teacher>"
    head = f"method {cfg.method!r} distils from a teacher, but teacher.checkpoint is not set"
    root = f" data.root={cfg.data.root}" if cfg.data.root else ""
    train_one = (
        f"train one with `famkd train method=vanilla student={teacher} data.dataset={cfg.data.dataset}{root}` and pass "
        "teacher.checkpoint=<its run dir>/student_best.pt"
    )
    if cfg.data.dataset == "imagenet":
        return (
            f"{head}: pass teacher.checkpoint=PATH, a state dict of a {teacher} trained on ImageNet (a torchvision or "
            f"timm file, .pth or .safetensors), or a torchvision weights entry such as "
            f"{TORCHVISION_PREFIX}ResNet34_Weights.IMAGENET1K_V1"
        )
    if cfg.data.dataset == "cifar100" and not is_external(teacher):
        return (
            f"{head}. Train one with `famkd train configs/cifar100/vanilla/{teacher}.yaml` and pass "
            "teacher.checkpoint=<its run dir>/student_best.pt, or use a community CIFAR-100 teacher: "
            f"cifar_teachers.tar of the RepDistiller/mdistiller zoo ({COMMUNITY_TEACHERS_URL}), "
            f"e.g. teacher.checkpoint=cifar_teachers/{teacher}_vanilla/ckpt_epoch_240.pth"
        )
    return f"{head}: {train_one}, or pass teacher.checkpoint=PATH, a state dict of a {teacher} trained on these classes"
