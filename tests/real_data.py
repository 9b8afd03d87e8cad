"""Where the real CIFAR-100 and the shared teacher checkpoints are, for the tests that use them.

$FAMKD_DATA, when set, is the CIFAR-100 directory (the .npy layout) and the teachers are in the
`cifar100_teachers` directory beside it. Otherwise both are in the shared data folder beside the
repository: ../shared/data/cifar100 and ../shared/data/cifar100_teachers. Skip reasons name these
places by the `*_WHERE` descriptions, never by this machine's absolute paths.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

if os.environ.get("FAMKD_DATA"):
    REAL_CIFAR100 = Path(os.environ["FAMKD_DATA"]).expanduser().resolve()
    REAL_CIFAR100_WHERE = "$FAMKD_DATA"
else:
    REAL_CIFAR100 = SHARED_DATA / "cifar100"
    REAL_CIFAR100_WHERE = "../shared/data/cifar100 beside the repository"

TEACHERS = REAL_CIFAR100.parent / "cifar100_teachers"
TEACHERS_WHERE = f"cifar100_teachers/ beside {REAL_CIFAR100_WHERE}"
RESNET56_TEACHER = TEACHERS / "resnet56.pth"
