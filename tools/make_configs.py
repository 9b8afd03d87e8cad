"""Write configs/cifar100/, configs/cifar100-quick/ and configs/imagenet/ from the paper's pair tables
(famkd.recipes; docs/method.md gives the sources).

    python tools/make_configs.py           rewrite the three folders (and delete stale .yaml files there)
    python tools/make_configs.py --check   exit 1 listing the files that differ from what would be written

Each cifar100/ and imagenet/ file states only the values that differ from famkd.config's defaults,
plus `method`, `student` and `teacher.name`, which are always written so a file reads on its own,
and the recipe's method options. Each cifar100-quick/ file names its cifar100/ file as `base:` and
shortens the schedule alone (see QUICK_EPOCHS). The output is deterministic: the same tables always
give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from famkd.config import Config
from famkd.recipes import CIFAR_PAIRS, IMAGENET_PAIRS, LIGHTWEIGHT_STUDENTS, CifarPair, ImageNetPair
from famkd.settings import settings_to_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
FULL = "cifar100"  # the paper's schedule
QUICK = "cifar100-quick"  # the same recipes on a short schedule
IMAGENET = "imagenet"
COCO = "coco"
GENERATED_FOLDERS = (FULL, QUICK, IMAGENET, COCO)
QUICK_EPOCHS = 15

# The CIFAR-100 schedule (docs/method.md) shared by every run; lr comes per student.
CIFAR_SCHEDULE = {
    "epochs": 240,
    "batch_size": 64,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "lr_milestones": [150, 180, 210],
    "lr_decay": 0.1,
}
LIGHTWEIGHT_LR = 0.01
DEFAULT_LR = 0.05

FAM_WARMUP_EPOCHS = 20
KD_OPTIONS = {"temperature": 4.0, "ce_weight": 0.1, "loss_weight": 0.9}
# ReviewKD's warm-up; its loss weight is per pair (CifarPair.reviewkd_weight), fam_reviewkd's too (docs/method.md).
REVIEWKD_OPTIONS = {"warmup_epochs": 20}
# The CRD benchmark (RepDistiller) runs of the baselines: CE weight 1, no logit-KD term (`-a 0`), `-b` the weight.
FITNET_OPTIONS = {"loss_weight": 100.0, "ce_weight": 1.0}
AT_OPTIONS = {"loss_weight": 1000.0, "ce_weight": 1.0}
CRD_OPTIONS = {"loss_weight": 0.8, "ce_weight": 1.0, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_mom": 0.5}
WCORD_OPTIONS = {**CRD_OPTIONS, "local_weight": 0.8}
DKD_OPTIONS = {"alpha": 1.0, "temperature": 4.0, "warmup_epochs": 20, "ce_weight": 1.0}  # beta per pair

METHOD_TITLES = {
    "fam_kd": "FAM-KD (review form)",
    "fam_kd_l2l": "FAM-KD (layer-to-layer form)",
    "reviewkd": "ReviewKD",
    "fam_reviewkd": "FAM + ReviewKD",
    "kd": "KD",
    "fitnet": "FitNet",
    "at": "AT",
    "dkd": "DKD",
    "crd": "CRD",
    "wcord": "WCoRD",
}
FIXED_RECIPES = {
    "kd": KD_OPTIONS,
    "fitnet": FITNET_OPTIONS,
    "at": AT_OPTIONS,
    "crd": CRD_OPTIONS,
    "wcord": WCORD_OPTIONS,
}
DISTILL_METHODS = tuple(METHOD_TITLES)

# The ImageNet recipe (docs/method.md, "ImageNet"): the supplement's schedule for every run. batch_size is
# the global batch, split over the processes of a multi-GPU run.
IMAGENET_SCHEDULE = {
    "epochs": 100,
    "batch_size": 256,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "lr_milestones": [30, 60, 90],
    "lr_decay": 0.1,
}
IMAGENET_DATA = {"dataset": "imagenet"}
IMAGENET_STUDENTS = tuple(dict.fromkeys(pair.student for pair in IMAGENET_PAIRS))
IMAGENET_WARMUP_EPOCHS = 1
IMAGENET_KD_OPTIONS = {"temperature": 1.0, "ce_weight": 0.5, "loss_weight": 0.5}
IMAGENET_METHOD_TITLES = {"fam_kd": "FAM-KD (review form)", "kd": "KD", "reviewkd": "ReviewKD", "dkd": "DKD"}
# Where each method's ImageNet options come from; {pair} is the pair's folder in the published configs.
IMAGENET_SOURCES = {
    "fam_kd": "the supplement (weight 1, warm-up 1 epoch); the pooled level as a residual alone, as in the published "
    "FAM-KD configs/imagenet/r34_r18/fam_kd.yaml",
    "kd": "mdistiller's configs/imagenet/{pair}/kd.yaml, the DKD paper's ImageNet KD (trained at batch 512, lr 0.2)",
    "reviewkd": "mdistiller's configs/imagenet/{pair}/reviewkd.yaml; head width: ReviewKD's ImageNet code",
    "dkd": "mdistiller's configs/imagenet/{pair}/dkd.yaml, alpha at its default 1 (trained at batch 512, lr 0.2)",
}
# Trailing comments on single ImageNet distill values: (method, pair name, option) -> why.
IMAGENET_VALUE_NOTES = {
    (
        "fam_kd",
        "resnet50_MobileNetV1",
        "student_preact",
    ): "as the only published FAM config of this pair (FAM_REVIEW_KD, STU_PREACT true); docs/method.md",
    (
        "reviewkd",
        "resnet50_MobileNetV1",
        "max_mid_channels",
    ): "ReviewKD's ImageNet code and mdistiller's config; mdistiller's code ignores it and uses 512",
}

# Trailing comments on single values: (method, pair name, distill option) -> why the value is what it is.
VALUE_NOTES = {
    (
        "fam_kd",
        "resnet56_resnet20",
        "loss_weight",
    ): "the supplement gives 1; the published res56_res20 config file says 0.8 (docs/method.md)",
    ("dkd", "resnet110_resnet20", "beta"): "no published DKD config for this pair: famkd's choice, as the other ResNet "
    "pairs (docs/method.md)",
    **{
        (method, name, "loss_weight"): "ReviewKD's CIFAR-100/script/reviewKD.sh; mdistiller's config uses 5 "
        "(docs/method.md)"
        for method in ("reviewkd", "fam_reviewkd")
        for name in ("resnet56_resnet20", "resnet110_resnet32", "resnet32x4_ShuffleV2")
    },
}


def distill_options(method: str, pair: CifarPair) -> dict:
    """The distiller options of `method` for `pair` (docs/method.md)."""
    if method in ("fam_kd", "fam_kd_l2l"):
        return {
            "loss_weight": float(pair.alpha),
            "student_preact": pair.student_preact,
            "warmup_epochs": FAM_WARMUP_EPOCHS,
        }
    if method == "dkd":
        return {**DKD_OPTIONS, "beta": float(pair.dkd_beta)}
    if method in ("reviewkd", "fam_reviewkd"):
        return {"loss_weight": float(pair.reviewkd_weight), **REVIEWKD_OPTIONS}
    if method in FIXED_RECIPES:
        return dict(FIXED_RECIPES[method])
    raise ValueError(f"no CIFAR recipe for method {method!r}; known: {', '.join(DISTILL_METHODS)}")


def model_lr(model: str) -> float:
    """0.01 for MobileNetV2/ShuffleNet, 0.05 for everything else (docs/method.md)."""
    return LIGHTWEIGHT_LR if model in LIGHTWEIGHT_STUDENTS else DEFAULT_LR


def vanilla_models() -> list[str]:
    """Every teacher and every student of the pair table, in first-seen order."""
    names = [name for pair in CIFAR_PAIRS for name in (pair.teacher, pair.student)]
    return list(dict.fromkeys(names))


def differing(values: dict, defaults: dict) -> dict:
    """The entries of nested `values` that differ from `defaults` (empty sections dropped)."""
    kept = {}
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict) and default:
            value = differing(value, default)
            if value:
                kept[key] = value
        elif value != default or type(value) is not type(default):
            kept[key] = value
    return kept


def minimal_config(method: str, student: str, teacher: str, distill: dict, train: dict, data: dict) -> dict:
    """The config of one run as a nested dict, reduced to what differs from the defaults."""
    full = {
        "method": method,
        "student": student,
        "teacher": {"name": teacher},
        "distill": distill,
        "data": data,
        "train": train,
    }
    defaults = {**settings_to_dict(Config()), "distill": {}}  # the recipe's options are always written
    kept = differing(full, defaults)
    kept["method"], kept["student"] = method, student  # always written, for readability
    if teacher:
        kept["teacher"] = {**kept.get("teacher", {}), "name": teacher}
    return {key: kept[key] for key in full if key in kept}


def yaml_scalar(value: object) -> str:
    """`value` as a YAML scalar that reads back as the same Python value and type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(yaml_scalar(item) for item in value) + "]"
    if isinstance(value, str):
        return value if value and yaml.safe_load(value) == value else json.dumps(value)
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a YAML scalar")


def yaml_lines(values: dict, notes: dict[str, str], indent: str = "") -> list[str]:
    """Block-style YAML of nested `values`; `notes` maps a leaf key to a trailing comment."""
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines += yaml_lines(value, notes, indent + "  ")
        else:
            note = f"  # {notes[key]}" if key in notes else ""
            lines.append(f"{indent}{key}: {yaml_scalar(value)}{note}")
    return lines


def distill_config_text(method: str, pair: CifarPair) -> str:
    relative = f"{method}/{pair.name}.yaml"
    header = (
        f"# {METHOD_TITLES[method]}, {pair.teacher} -> {pair.student} on CIFAR-100 (docs/method.md). "
        f"Run: famkd train configs/{FULL}/{relative} teacher.checkpoint=PATH"
    )
    values = minimal_config(
        method, pair.student, pair.teacher, distill_options(method, pair), cifar_train(pair.student), {}
    )
    notes = {option: note for (m, name, option), note in VALUE_NOTES.items() if (m, name) == (method, pair.name)}
    return "\n".join([header, *yaml_lines(values, notes)]) + "\n"


def vanilla_config_text(model: str) -> str:
    role = "a teacher" if any(pair.teacher == model for pair in CIFAR_PAIRS) else "a student baseline"
    header = (
        f"# {model} trained from scratch on CIFAR-100 ({role}, the docs/method.md schedule). "
        f"Run: famkd train configs/{FULL}/vanilla/{model}.yaml"
    )
    values = minimal_config("vanilla", model, "", {}, cifar_train(model), {})
    return "\n".join([header, *yaml_lines(values, {})]) + "\n"


def cifar_train(student: str) -> dict:
    """The CIFAR-100 schedule with the student's learning rate."""
    return {**CIFAR_SCHEDULE, "lr": model_lr(student)}


def imagenet_distill_options(method: str, pair: ImageNetPair) -> dict:
    """The distiller options of `method` for the ImageNet `pair` (docs/method.md, "ImageNet")."""
    if method == "fam_kd":
        return {
            "loss_weight": 1.0,
            "warmup_epochs": IMAGENET_WARMUP_EPOCHS,
            "student_preact": pair.fam_student_preact,
            "pooled_level": "residual",
        }
    if method == "kd":
        return dict(IMAGENET_KD_OPTIONS)
    if method == "reviewkd":
        return {
            "loss_weight": pair.reviewkd_weight,
            "warmup_epochs": IMAGENET_WARMUP_EPOCHS,
            "student_preact": True,
            "max_mid_channels": pair.reviewkd_mid_channels,
        }
    if method == "dkd":
        return {
            "alpha": 1.0,
            "beta": pair.dkd_beta,
            "temperature": 1.0,
            "warmup_epochs": IMAGENET_WARMUP_EPOCHS,
            "ce_weight": 1.0,
        }
    raise ValueError(f"no ImageNet recipe for method {method!r}; known: {', '.join(IMAGENET_METHOD_TITLES)}")


IMAGENET_BATCH_NOTE = "# train.batch_size is the global batch: 256 images per step over all processes together."


def imagenet_config_text(method: str, pair: ImageNetPair) -> str:
    relative = f"{method}/{pair.name}.yaml"
    header = [
        f"# {IMAGENET_METHOD_TITLES[method]}, {pair.teacher} -> {pair.student} on ImageNet (docs/method.md). "
        f"Run: famkd train configs/{IMAGENET}/{relative} data.root=PATH teacher.checkpoint=PATH",
        IMAGENET_BATCH_NOTE,
        f"# Method options: {IMAGENET_SOURCES[method].format(pair=pair.published_name)}.",
    ]
    distill = imagenet_distill_options(method, pair)
    values = minimal_config(method, pair.student, pair.teacher, distill, IMAGENET_SCHEDULE, IMAGENET_DATA)
    notes = {
        option: note for (m, name, option), note in IMAGENET_VALUE_NOTES.items() if (m, name) == (method, pair.name)
    }
    return "\n".join([*header, *yaml_lines(values, notes)]) + "\n"


def imagenet_vanilla_text(model: str) -> str:
    header = [
        f"# {model} trained from scratch on ImageNet (a student baseline, the docs/method.md schedule). "
        f"Run: famkd train configs/{IMAGENET}/vanilla/{model}.yaml data.root=PATH",
        IMAGENET_BATCH_NOTE,
    ]
    values = minimal_config("vanilla", model, "", {}, IMAGENET_SCHEDULE, IMAGENET_DATA)
    return "\n".join([*header, *yaml_lines(values, {})]) + "\n"


def imagenet_config_texts() -> dict[str, str]:
    """Relative path under configs/imagenet/ -> file text: every method on every pair, and the students alone."""
    texts = {
        f"{method}/{pair.name}.yaml": imagenet_config_text(method, pair)
        for method in IMAGENET_METHOD_TITLES
        for pair in IMAGENET_PAIRS
    }
    texts.update({f"vanilla/{model}.yaml": imagenet_vanilla_text(model) for model in IMAGENET_STUDENTS})
    return texts


def quick_schedule(epochs: int = QUICK_EPOCHS) -> dict:
    """The paper's schedule shrunk to `epochs`: milestones at the same fractions of the run (rounded), the
    other settings unchanged."""
    scale = epochs / CIFAR_SCHEDULE["epochs"]
    return {"epochs": epochs, "lr_milestones": [round(m * scale) for m in CIFAR_SCHEDULE["lr_milestones"]]}


def quick_warmup(epochs: int = QUICK_EPOCHS) -> int:
    """The warm-up at the same fraction of the run as 20 of 240 epochs, at least one epoch."""
    return max(1, round(FAM_WARMUP_EPOCHS * epochs / CIFAR_SCHEDULE["epochs"]))


def quick_config_text(full_relative: str, options: dict) -> str:
    """A cifar100-quick file: its cifar100 counterpart as base, the short schedule and warm-up on top."""
    values: dict = {"base": f"../../{FULL}/{full_relative}", "train": quick_schedule()}
    if "warmup_epochs" in options:
        values["distill"] = {"warmup_epochs": quick_warmup()}
    header = (
        f"# Quick protocol (docs/method.md#quick-protocol): configs/{FULL}/{full_relative} on a {QUICK_EPOCHS}-epoch "
        f"schedule. Run: famkd train configs/{QUICK}/{full_relative}"
        + (" teacher.checkpoint=PATH" if not full_relative.startswith("vanilla/") else "")
    )
    return "\n".join([header, *yaml_lines(values, {})]) + "\n"


# MS-COCO (docs/detection.md): the pairs of ReviewKD and DKD, teacher -> student backbone, and ReviewKD's loss
# weight per pair from mdistiller's detection/configs/ReviewKD/*.yaml. The schedule (180k iterations, batch 8,
# lr 0.01, x0.1 at 120k and 160k) is famkd.detection.config's default, so the files do not repeat it; nor do
# they repeat the recipe's defaults (Detectron2's: frozen batch norm, L1 box regression, no weight decay on norm
# layers). They do state the multi-scale training sizes, mdistiller's detection/configs/Base-Distillation.yaml
# INPUT.MIN_SIZE_TRAIN (single-scale data.min_size is famkd's default, as (800,) is Detectron2's).
COCO_PAIRS = {("resnet101", "resnet18"): 1.2, ("resnet101", "resnet50"): 1.0, ("resnet50", "mobilenet_v2"): 2.0}
COCO_METHODS = ("fam_kd", "reviewkd", "kd", "vanilla")
COCO_MIN_SIZE_TRAIN = [640, 672, 704, 736, 768, 800]
COCO_NOTES = {"min_size_train": "one drawn per image (Base-Distillation.yaml INPUT.MIN_SIZE_TRAIN, 'choice')"}


def coco_config_text(method: str, teacher: str, student: str) -> str:
    """configs/coco/<method>/<teacher>_<student>.yaml: the method, the pair, the multi-scale training sizes and
    ReviewKD's per-pair weight."""
    values: dict = {"method": method, "student": student}
    if method != "vanilla":
        values["teacher"] = {"name": teacher}
    values["data"] = {"min_size_train": COCO_MIN_SIZE_TRAIN}
    if method == "reviewkd":
        values["distill"] = {"loss_weight": COCO_PAIRS[(teacher, student)]}
    teacher_note = " teacher.checkpoint=PATH" if method != "vanilla" else ""
    header = (
        f"# {method} on MS-COCO, Faster R-CNN + FPN {teacher} -> {student} (docs/detection.md; the paper's schedule "
        "and recipe are the defaults: frozen BN, L1 box regression, no weight decay on norms). "
        f"Run: famkd detect train configs/{COCO}/{method}/{teacher}_{student}.yaml data.root=PATH" + teacher_note
    )
    return "\n".join([header, *yaml_lines(values, COCO_NOTES)]) + "\n"


def coco_config_texts() -> dict[str, str]:
    return {
        f"{method}/{teacher}_{student}.yaml": coco_config_text(method, teacher, student)
        for method in COCO_METHODS
        for teacher, student in COCO_PAIRS
    }


def config_texts() -> dict[str, str]:
    """Relative path under configs/ (e.g. "cifar100/fam_kd/resnet56_resnet20.yaml") -> file text."""
    full = {
        f"{method}/{pair.name}.yaml": (distill_config_text(method, pair), distill_options(method, pair))
        for method in DISTILL_METHODS
        for pair in CIFAR_PAIRS
    }
    full.update({f"vanilla/{model}.yaml": (vanilla_config_text(model), {}) for model in vanilla_models()})
    texts = {f"{FULL}/{name}": text for name, (text, _) in full.items()}
    texts.update({f"{QUICK}/{name}": quick_config_text(name, options) for name, (_, options) in full.items()})
    texts.update({f"{IMAGENET}/{name}": text for name, text in imagenet_config_texts().items()})
    texts.update({f"{COCO}/{name}": text for name, text in coco_config_texts().items()})
    return dict(sorted(texts.items()))


def existing_configs(directory: Path) -> list[str]:
    """Relative paths of the .yaml files in the generated folders under `directory`, sorted."""
    found = [path for folder in GENERATED_FOLDERS for path in (directory / folder).rglob("*.yaml")]
    return sorted(path.relative_to(directory).as_posix() for path in found)


def stale_configs(directory: Path) -> list[str]:
    """Files under `directory` that differ from, are missing from, or are absent from the generated set."""
    expected = config_texts()
    present = existing_configs(directory)
    problems = [f"{name} (not generated: delete it)" for name in present if name not in expected]
    for name, text in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} (missing)")
        elif path.read_text() != text:
            problems.append(f"{name} (differs)")
    return sorted(problems)


def write_configs(directory: Path) -> tuple[list[str], list[str]]:
    """Write every generated file under `directory` and delete other .yaml files there.

    Returns (written relative paths, deleted relative paths).
    """
    expected = config_texts()
    deleted = [name for name in existing_configs(directory) if name not in expected]
    for name in deleted:
        (directory / name).unlink()
    for name, text in expected.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(expected), deleted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate configs/cifar100, configs/cifar100-quick and configs/imagenet from famkd.recipes "
        "(docs/method.md)."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing the files that differ from the generated ones",
    )
    parser.add_argument("--dir", type=Path, default=CONFIG_DIR, help=f"the configs folder (default: {CONFIG_DIR})")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_configs(args.dir)
        for problem in problems:
            print(f"{args.dir / problem}", file=sys.stderr)
        if problems:
            print(
                f"{len(problems)} config file(s) out of step with famkd.recipes: "
                "run `python tools/make_configs.py` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"{len(config_texts())} config files in {args.dir} match famkd.recipes")
        return 0
    written, deleted = write_configs(args.dir)
    for name in deleted:
        print(f"deleted {args.dir / name}")
    print(f"wrote {len(written)} config files under {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
