"""Multiply-adds per image of a KD step and of each method's heads: the step-time ratio to KD
that arithmetic alone implies, before any overhead.

    python benchmarks/flop_floor.py [--methods reviewkd,fam_kd]

Counted with torch.utils.flop_counter (convolutions and matrix products; FFTs and elementwise
work are not counted). A KD step is a teacher forward plus a student forward and backward; a
backward is counted as twice its forward. Prints, per pair and method,
"resnet32x4->resnet8x4 reviewkd heads 295M MACs/image, floor 1.55x kd".
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from famkd.distill import create_distiller
from famkd.distill.levels import level_features
from famkd.models import create_model

PAIRS = (("resnet32x4", "resnet8x4"), ("resnet56", "resnet20"))
BACKWARD_FACTOR = 2  # a backward pass costs about two forwards (input and weight gradients)


def mega_macs(function, batch: int) -> float:
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops() / 2 / batch / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="reviewkd,fam_kd")
    args = parser.parse_args()
    images = torch.randn(2, 3, 32, 32)
    for teacher_name, student_name in PAIRS:
        teacher, student = create_model(teacher_name), create_model(student_name)
        teacher_macs = mega_macs(partial(teacher, images), 2)
        student_macs = mega_macs(partial(student, images), 2)
        kd_step = teacher_macs + (1 + BACKWARD_FACTOR) * student_macs
        print(
            f"{teacher_name}->{student_name}: teacher forward {teacher_macs:.0f}M, "
            f"student forward {student_macs:.0f}M, "
            f"KD step {kd_step:.0f}M MACs/image"
        )
        for method in args.methods.split(","):
            distiller = create_distiller(method, student=student, teacher=teacher, image_size=32).train()
            preact = distiller.options.student_preact
            with torch.no_grad():
                maps = level_features(student.forward_features(images), len(distiller.heads), preact)
            heads = mega_macs(partial(distiller.head_outputs, maps), 2)
            floor = (kd_step + (1 + BACKWARD_FACTOR) * heads) / kd_step
            print(f"  {teacher_name}->{student_name} {method} heads {heads:.0f}M MACs/image, floor {floor:.2f}x kd")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
