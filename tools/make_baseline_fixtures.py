"""Write tests/fixtures/baseline_published.pt: loss terms and gradients of the published KD, DKD and
ReviewKD (mdistiller) and FitNet, AT and CRD (RepDistiller) on the cases of
tests/baseline_parity_setup.py, for tests/test_baseline_parity.py.

    PYTHONPATH=src python tools/make_baseline_fixtures.py --mdistiller CHECKOUT --repdistiller CHECKOUT

Each CHECKOUT is a published repository's files (e.g. `git --git-dir=... archive HEAD | tar -x`),
outside this repository; its modules are imported from there, unmodified, and nothing of them is
copied here. For every case, famkd's distiller is built and seeded (baseline_parity_setup), and the
published models (the checkout's own CIFAR model files) and distiller are loaded with the same
state: the student's and teacher's state dicts share their keys with famkd's zoo, the heads' are
mapped by name below. Everything runs in float64 (the default dtype is set to float64 while the
published modules are built, so their constructors' tensors, e.g. CRD's `params` buffer holding
the temperature and normalisation constants, are float64 too). One training-mode step on the
seeded batch: the loss terms (famkd's names), the gradient summary (norm, position-weighted mean)
of every student and head parameter (famkd's names) and a few published intermediates are stored.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import published_checkout  # noqa: E402  (tools/, the script's folder, is on sys.path)

import baseline_parity_setup as setup  # noqa: E402

MDISTILLER_MODELS = {"vgg13": "vgg13_bn", "vgg8": "vgg8_bn", "MobileNetV2": "mobile_half"}
REPDISTILLER_MODELS = {"MobileNetV2": "MobileNetV2"}

# famkd head-key prefix -> published key prefix, per method (inside the published distiller).
HEAD_NAMES = {
    "reviewkd": [
        (r"heads.{i}.input_proj.", "abfs.{i}.conv1."),
        (r"heads.{i}.output_head.", "abfs.{i}.conv2."),
        (r"heads.{i}.attention.", "abfs.{i}.att_conv."),
    ],
    "fitnet": [("regressor.0.", "regress.conv."), ("regressor.1.", "regress.bn.")],
    "crd": [("embed_student.layers.0.", "crd.embed_s.linear."), ("embed_teacher.layers.0.", "crd.embed_t.linear.")],
}


def published_head_name(method: str, key: str) -> str:
    for ours, theirs in HEAD_NAMES[method]:
        for i in range(8):
            prefix = ours.format(i=i)
            if key.startswith(prefix):
                return theirs.format(i=i) + key[len(prefix) :]
    raise KeyError(f"no published name for {method} head key {key}")


def import_mdistiller(checkout: Path) -> dict[str, Any]:
    """mdistiller's CIFAR models and the KD, DKD and ReviewKD modules."""
    modules = {
        "models": "mdistiller.models.cifar",
        "KD": "mdistiller.distillers.KD",
        "DKD": "mdistiller.distillers.DKD",
        "ReviewKD": "mdistiller.distillers.ReviewKD",
    }
    return published_checkout.import_mdistiller(checkout, ("mdistiller.models", "mdistiller.distillers"), modules)


def import_repdistiller(checkout: Path) -> dict[str, Any]:
    sys.path.insert(0, str(checkout))
    memory = importlib.import_module("crd.memory")
    # ContrastMemory's constructor moves its (here unused: negatives are passed in) alias sampler to
    # CUDA; on a CPU-only machine that move is skipped. Nothing else is touched.
    memory.AliasMethod.cuda = lambda self: None
    return {
        "models": importlib.import_module("models"),
        "util": importlib.import_module("models.util"),
        "zoo": importlib.import_module("distiller_zoo"),
        "criterion": importlib.import_module("crd.criterion"),
    }


def load_published(published: nn.Module, famkd_state: dict[str, Tensor], method: str, heads: bool) -> None:
    """Load famkd's seeded state into the published module (student/teacher keys shared, heads mapped)."""
    state = {}
    for key, value in famkd_state.items():
        if key.startswith(("student.", "teacher.")):
            state[key] = value
        elif heads and not key.startswith("memory."):
            state[published_head_name(method, key)] = value
    missing, unexpected = published.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    for key in missing:
        assert key.startswith("crd.contrast."), f"{key} not set"


def summaries(published: nn.Module, method: str) -> dict[str, list[float]]:
    """Gradient summary of every trainable student and head parameter, under famkd's names."""
    inverse = {}
    if method in HEAD_NAMES:
        for ours, theirs in HEAD_NAMES[method]:
            for i in range(8):
                inverse[theirs.format(i=i)] = ours.format(i=i)
    result = {}
    for key, parameter in published.named_parameters():
        if key.startswith("teacher."):
            assert parameter.grad is None or not parameter.grad.any(), key
            continue
        name = key
        for theirs, ours in inverse.items():
            if key.startswith(theirs):
                name = ours + key[len(theirs) :]
        assert parameter.grad is not None, key
        result[name] = setup.gradient_summary(parameter.grad)
    return result


class Pair(nn.Module):
    """student + teacher (+ heads), the module whose state famkd's distiller is loaded into."""

    def __init__(self, student: nn.Module, teacher: nn.Module, **heads: nn.Module):
        super().__init__()
        self.student, self.teacher = student, teacher
        for name, head in heads.items():
            self.add_module(name, head)


def mdistiller_case(case: setup.Case, md: dict[str, Any], famkd_state: dict[str, Tensor]) -> dict[str, Any]:
    models = md["models"]
    student = getattr(models, MDISTILLER_MODELS.get(case.student, case.student))(num_classes=100)
    teacher = getattr(models, MDISTILLER_MODELS.get(case.teacher, case.teacher))(num_classes=100)
    images, targets, _, _ = setup.batch()
    options = case.options
    extra: dict[str, Any] = {}
    if case.method == "kd":
        cfg = ns(KD=ns(TEMPERATURE=options["temperature"], LOSS=ns(CE_WEIGHT=0.1, KD_WEIGHT=0.9)))
        assert (options["ce_weight"], options["loss_weight"]) == (0.1, 0.9)
        distiller = md["KD"].KD(student, teacher, cfg)
    elif case.method == "dkd":
        cfg = ns(
            DKD=ns(CE_WEIGHT=1.0, ALPHA=options["alpha"], BETA=options["beta"], T=options["temperature"], WARMUP=20)
        )
        distiller = md["DKD"].DKD(student, teacher, cfg)
    else:
        s_feats, t_feats = feature_shapes(student, teacher)
        # ReviewKD's CIFAR settings as its configs write them: levels shallow to deep are the paired
        # stages (the last N of each model) and the pooled vector; SHAPES / OUT_SHAPES list the
        # student's / teacher's sides deepest first; IN_CHANNELS the student's channels.
        count = min(len(s_feats["feats"]) - 1, len(t_feats["preact_feats"]) - 1)
        s_levels = [f for f in s_feats["feats"][-count:]] + [(s_feats["pooled_feat"][1], 1, 1)]
        t_levels = [f for f in t_feats["preact_feats"][-count:]] + [(t_feats["pooled_feat"][1], 1, 1)]
        cfg = ns(
            REVIEWKD=ns(
                SHAPES=[s[1] for s in s_levels][::-1],
                OUT_SHAPES=[t[1] for t in t_levels][::-1],
                IN_CHANNELS=[s[0] for s in s_levels],
                OUT_CHANNELS=[t[0] for t in t_levels],
                CE_WEIGHT=1.0,
                REVIEWKD_WEIGHT=options["loss_weight"],
                WARMUP_EPOCHS=options["warmup_epochs"],
                STU_PREACT=False,
                MAX_MID_CHANNEL=512,
            )
        )
        extra["cfg"] = {k: v for k, v in vars(cfg.REVIEWKD).items()}
        distiller = md["ReviewKD"].ReviewKD(student, teacher, cfg)
    load_published(distiller, famkd_state, case.method, heads=case.method == "reviewkd")
    distiller.train()
    logits, losses = distiller(image=images, target=targets, epoch=setup.EPOCH)
    sum(losses.values()).backward()
    ours: dict[str, float] = {"ce": losses["loss_ce"].item()}
    if case.method == "kd":
        ours["kd"] = losses["loss_kd"].item()
    elif case.method == "dkd":
        # The published loss_kd is w * (alpha * TCKD + beta * NCKD); famkd logs the two terms apart,
        # so each is also computed with the published function (alpha, beta) = (1, 0) and (0, 1).
        weight = min(setup.EPOCH / 20, 1.0)
        with torch.no_grad():
            logits_teacher, _ = distiller.teacher(images)
            for name, alpha, beta in [("dkd_tckd", 1.0, 0.0), ("dkd_nckd", 0.0, 1.0)]:
                term = md["DKD"].dkd_loss(logits, logits_teacher, targets, alpha, beta, options["temperature"])
                ours[name] = weight * (options["alpha"] if beta == 0.0 else options["beta"]) * term.item()
        extra["loss_kd"] = losses["loss_kd"].item()
    else:
        ours["reviewkd"] = losses["loss_kd"].item()
    return {"losses": ours, "grads": summaries(distiller, case.method), **extra}


def feature_shapes(student: nn.Module, teacher: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    with torch.no_grad():
        x = torch.zeros(2, 3, 32, 32)
        shapes = []
        for model in (student, teacher):
            model.eval()
            _, feats = model(x)
            shapes.append({k: (None if v is None else tensor_shapes(v)) for k, v in feats.items()})
            model.train()
    return shapes[0], shapes[1]


def tensor_shapes(value: Any) -> Any:
    return (
        [tuple(t.shape[1:]) if t is not None else None for t in value]
        if isinstance(value, list)
        else tuple(value.shape)
    )


def repdistiller_case(case: setup.Case, rd: dict[str, Any], famkd_state: dict[str, Tensor]) -> dict[str, Any]:
    model_dict = rd["models"].model_dict
    student = model_dict[REPDISTILLER_MODELS.get(case.student, case.student)](num_classes=100)
    teacher = model_dict[REPDISTILLER_MODELS.get(case.teacher, case.teacher)](num_classes=100)
    images, targets, indices, _ = setup.batch()
    options = case.options
    # train_student.py: the shapes come from one pass in float32 mode on random data (eval mode here).
    with torch.no_grad():
        feat_t, _ = teacher.eval()(torch.randn(2, 3, 32, 32), is_feat=True)
        feat_s, _ = student.eval()(torch.randn(2, 3, 32, 32), is_feat=True)
    heads: dict[str, nn.Module] = {}
    hint_layer = 2  # train_student.py's default --hint_layer
    extra: dict[str, Any] = {}
    if case.method == "fitnet":
        heads["regress"] = rd["util"].ConvReg(feat_s[hint_layer].shape, feat_t[hint_layer].shape)
    elif case.method == "crd":
        opt = ns(
            s_dim=feat_s[-1].shape[1],
            t_dim=feat_t[-1].shape[1],
            feat_dim=128,
            nce_k=options["nce_k"],
            nce_t=options["nce_t"],
            nce_m=options["nce_mom"],
            n_data=setup.NUM_SAMPLES,
        )
        heads["crd"] = rd["criterion"].CRDLoss(opt)
    pair = Pair(student, teacher, **heads)
    load_published(pair, famkd_state, case.method, heads=bool(heads))
    if case.method == "crd":
        contrast = heads["crd"].contrast
        student_memory, teacher_memory = setup.memories(contrast.memory_v1.shape[1])
        contrast.memory_v1.copy_(student_memory)  # memory_v1 holds the student's embeddings (v1)
        contrast.memory_v2.copy_(teacher_memory)
    # helper/loops.py train_distill: every module in train mode, the teacher in eval mode.
    pair.train()
    teacher.eval()
    preact = False  # train_distill's preact is False for hint, attention and crd
    feat_s, logit_s = student(images, is_feat=True, preact=preact)
    with torch.no_grad():
        feat_t, logit_t = teacher(images, is_feat=True, preact=preact)
        feat_t = [f.detach() for f in feat_t]
    # train_distill with `-r 1 -a 0 -b beta`: loss = 1 * CE + 0 * KL + beta * loss_kd.
    loss_cls = nn.CrossEntropyLoss()(logit_s, targets)
    if case.method == "fitnet":
        loss_kd = rd["zoo"].HintLoss()(heads["regress"](feat_s[hint_layer]), feat_t[hint_layer])
    elif case.method == "at":
        loss_kd = sum(rd["zoo"].Attention(p=options["p"])(feat_s[1:-1], feat_t[1:-1]))
    else:
        contrast_idx = torch.cat([indices[:, None], setup.crd_negatives()], dim=1)
        crd = heads["crd"]
        # The published CRDLoss.forward, step by step, keeping the scored probabilities.
        f_s, f_t = crd.embed_s(feat_s[-1]), crd.embed_t(feat_t[-1])
        out_s, out_t = crd.contrast(f_s, f_t, indices, contrast_idx)
        s_loss, t_loss = crd.criterion_s(out_s), crd.criterion_t(out_t)
        loss_kd = s_loss + t_loss
        extra["crd"] = {
            "probabilities": torch.stack([out_s.detach().squeeze(-1), out_t.detach().squeeze(-1)]),
            "nce": torch.cat([s_loss.detach(), t_loss.detach()]),
            "normalizers": contrast.params[2:4].clone(),
            "memory_rows": torch.stack([contrast.memory_v1[indices], contrast.memory_v2[indices]]).clone(),
            "embeddings": torch.stack([f_s.detach(), f_t.detach()]),
        }
    loss = loss_cls * 1.0 + options["loss_weight"] * loss_kd
    loss.backward()
    losses = {"ce": loss_cls.item(), case.method: (options["loss_weight"] * loss_kd).item()}
    return {"losses": losses, "grads": summaries(pair, case.method), **extra}


def ns(**values: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(**values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mdistiller", type=Path, required=True, help="a checkout of megvii-research/mdistiller")
    parser.add_argument("--repdistiller", type=Path, required=True, help="a checkout of HobbitLong/RepDistiller")
    parser.add_argument("--mdistiller-commit", default=None, help="its commit, if the checkout is no git work tree")
    parser.add_argument("--repdistiller-commit", default=None, help="its commit, if the checkout is no git work tree")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / setup.FIXTURE_NAME)
    parser.add_argument("--only", default=None, help="a method: write only its cases (others kept)")
    args = parser.parse_args()
    for checkout in (args.mdistiller, args.repdistiller):
        if checkout.resolve().is_relative_to(ROOT):
            parser.error(f"{checkout} is inside this repository: use a checkout outside it")
    md, rd = import_mdistiller(args.mdistiller.resolve()), import_repdistiller(args.repdistiller.resolve())
    record: dict[str, Any] = {
        "sources": {
            "mdistiller": args.mdistiller_commit or published_checkout.commit_of(args.mdistiller),
            "RepDistiller": args.repdistiller_commit or published_checkout.commit_of(args.repdistiller),
            "torch": str(torch.__version__),
        },
        "epoch": setup.EPOCH,
        "cases": {},
    }
    if args.only and args.out.exists():
        record["cases"] = torch.load(args.out, weights_only=True)["cases"]
    for case in setup.CASES:
        if args.only and case.method != args.only:
            continue
        famkd_state = {k: v.clone() for k, v in setup.build_famkd(case).state_dict().items()}
        torch.set_default_dtype(torch.float64)
        try:
            if case.method in ("kd", "dkd", "reviewkd"):
                result = mdistiller_case(case, md, famkd_state)
            else:
                result = repdistiller_case(case, rd, famkd_state)
        finally:
            torch.set_default_dtype(torch.float32)
        record["cases"][case.name] = result
        print(case.name, {k: f"{v:.12g}" for k, v in result["losses"].items()}, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
