"""The experiment config: the sections every task shares (teacher, train, run), and classification's `Config`.

A config file states only what differs from the defaults and may name a parent file with `base:`;
command-line overrides come last (`train.epochs=2 run.deterministic=true train.lr_milestones=[1,2]`, each
value parsed as YAML). The machinery is famkd.settings: an unknown key is a ConfigError naming the nearest
valid one, and a value of the wrong type or outside its allowed set one naming the key, the value and what
is allowed. The `data:` section is the options of the dataset `data.dataset` names (famkd.data.registry).

The `distill:` section holds the method's options (famkd.distill). A config always holds every option of its
method with its effective value: the given ones checked, the others at their defaults. So `--print-config`,
the run's config.yaml and its checkpoints show exactly what a run used, and a bad option fails here, before
any data or teacher is read. famkd.detection.config's `DetectionConfig` shares the teacher, train and run
sections declared here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from famkd.data import DataOptions
from famkd.data.cifar100 import Cifar100Options
from famkd.distill import resolve_method_options
from famkd.errors import ConfigError
from famkd.models.registry import check_model_name
from famkd.settings import load_settings, setting, settings_from_dict, settings_with_overrides

DEVICES = ("cpu", "cuda", "auto")
AMP_MODES = ("off", "bf16", "fp16")
GRAD_COMPRESSIONS = ("none", "bf16", "fp16")


@dataclass
class TeacherConfig:
    """The frozen teacher of a distillation run."""

    name: str = ""  # its architecture, e.g. "resnet56" or "timm:convnext_atto" ("" -> the one its checkpoint records)
    # a community {"model": ...} file, a famkd checkpoint, a timm/torchvision state dict (.pth, .safetensors), a
    # Detectron2 .pkl, or torchvision:<Weights>.<entry>
    checkpoint: str = setting("", path=True)
    sha256: str = ""  # when set, the checkpoint file's SHA-256 must match


def default_milestones() -> list[int]:
    return [150, 180, 210]


@dataclass
class TrainConfig:
    """The optimisation schedule and the step: SGD over the student and the heads, either `epochs` long (the
    classification recipes) or `iterations` long (the detection recipes), never both.

    lr_milestones are epochs or iterations (the schedule's unit) after which lr *= lr_decay; warmup_iters
    ramps the lr linearly from warmup_factor * lr over the first iterations (Detectron2's warm-up). Every
    `eval_every` epochs or iterations (0: at the end only) the student is evaluated, the record written
    with the evaluation and the checkpoint saved; `checkpoint_every` steps also save one (0: never
    between evaluations, but at every epoch's end); `log_interval` steps between host syncs (progress bar,
    non-finite check, and in an iteration schedule a metrics record). Under torchrun, a process that waits
    `dist_timeout` seconds for a peer in a collective gives the peer up and the run stops (a dead peer's
    connection usually fails at once); it must exceed the longest time one process works alone (process 0
    writing a checkpoint, an evaluation). `threads` sets torch's intra-op threads (famkd.engine.threads);
    `grad_compression` all-reduces the gradients in half precision (famkd.engine.distributed); `shard_heads`
    shards the distillation heads over the processes (famkd.engine.sharding).
    """

    epochs: int = setting(240, minimum=0)
    iterations: int = setting(0, minimum=0)
    batch_size: int = setting(64, minimum=1)  # the global batch, shared out over the processes
    lr: float = setting(0.05, minimum=0.0)
    momentum: float = setting(0.9, minimum=0.0)
    weight_decay: float = setting(5e-4, minimum=0.0)
    norm_weight_decay: bool = True  # false: no weight decay on normalisation layers (Detectron2's WEIGHT_DECAY_NORM 0)
    nesterov: bool = False
    lr_milestones: list[int] = setting(factory=default_milestones)
    lr_decay: float = setting(0.1, minimum=0.0)
    warmup_iters: int = setting(0, minimum=0)
    warmup_factor: float = setting(0.001, minimum=0.0)
    max_steps_per_epoch: int = setting(0, minimum=0)  # 0 = all
    eval_every: int = setting(1, minimum=0)
    checkpoint_every: int = setting(0, minimum=0)
    log_interval: int = setting(20, minimum=1)
    eval_batch_size: int = setting(256, minimum=1)  # per process
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False  # several processes (torchrun): batch-norm statistics over the global batch
    dist_timeout: int = setting(300, minimum=1)  # seconds a process waits for a peer (torchrun) before giving up
    # intra-op threads of each process; 0: the CPUs it may use (affinity, cgroup quota) / its processes on the host
    threads: int = setting(0, minimum=0)
    # several processes (torchrun): gradients all-reduced as bf16 or fp16 (DDP's compression hooks), half the bytes
    grad_compression: str = setting("none", choices=GRAD_COMPRESSIONS)
    # several processes (torchrun): the heads' parameters, gradients and optimiser state sharded over them (FSDP2)
    shard_heads: bool = False

    def __post_init__(self) -> None:
        if (self.epochs > 0) == (self.iterations > 0):
            raise ConfigError(
                f"set exactly one of train.epochs and train.iterations (the other 0), got epochs={self.epochs}, "
                f"iterations={self.iterations}"
            )


@dataclass
class RunConfig:
    """Where a run writes and how reproducible it is."""

    dir: str = setting("", path=True)  # "" -> runs/<method>/<teacher>_<student>-<timestamp>
    seed: int = setting(0, minimum=0)
    deterministic: bool = False
    tensorboard: bool = True
    spectra_every: int = setting(10, minimum=0)  # epochs between FAM spectra files, 0 = never (classification)
    # "auto": a run.dir holding a run of the same settings is resumed (a requeued job, an elastic restart)
    resume: str = setting("never", choices=("never", "auto"))
    keep_checkpoints: int = setting(2, minimum=1)  # last.pt and the ones before it (previous-1.pt, ...)


@dataclass
class Config:
    """One classification experiment: a method, a student, its teacher, the data and the schedule."""

    task: ClassVar[str] = "classification"

    method: str = "vanilla"
    student: str = "resnet20"  # a zoo model, timm:<name> or torchvision:<name> (famkd.models.create_model)
    student_init: str = setting("", path=True)  # pretrained weights the student starts from ("" -> none)
    student_taps: list[str] = setting(factory=list)  # module paths of the student's taps ([] -> found)
    teacher_taps: list[str] = setting(factory=list)  # and of the teacher's
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: dict = field(default_factory=dict)  # the method's options; see the module docstring
    data: DataOptions = field(default_factory=Cifar100Options)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    device: str = setting("auto", choices=DEVICES)
    amp: str = setting("off", choices=AMP_MODES)

    def __post_init__(self) -> None:
        """Check the model names and fill `distill` with the method's effective options."""
        _check_model_name("student", self.student)
        if self.teacher.name:
            _check_model_name("teacher.name", self.teacher.name)
        self.distill = resolve_method_options(self.method, self.distill)


def _check_model_name(key: str, name: str) -> None:
    """A ConfigError naming `key` when `name` is no zoo, timm or torchvision model."""
    try:
        check_model_name(name)
    except ConfigError as error:
        raise ConfigError(f"{key}: {error}") from None


def config_from_dict(values: dict) -> Config:
    """A validated `Config` from a (possibly partial) nested dict; missing keys keep their defaults."""
    return settings_from_dict(Config, values)


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file at `path` (and its `base:` chain), then `key.sub=value` overrides."""
    return load_settings(Config, path, overrides)


def config_with_overrides(values: dict, overrides: Iterable[str] = ()) -> Config:
    """The config of nested `values` (e.g. a saved config) with `key.sub=value` overrides applied."""
    return settings_with_overrides(Config, values, overrides)
