"""`famkd` for torchrun tests that signal one worker at a known step: `torchrun ... signalling_famkd.py train ...`.

With FAMKD_TEST_SIGNAL=<name> (SIGTERM, SIGKILL, ...), FAMKD_TEST_SIGNAL_RANK=<rank> and FAMKD_TEST_SIGNAL_STEP=<n>,
the worker of that rank sends the signal to itself right after its optimiser step n (a signal from outside,
delivered at a known step), in the first attempt of an elastic run only (TORCHELASTIC_RESTART_COUNT 0), after
writing the wall-clock time and its pid to FAMKD_TEST_SIGNAL_LOG. Otherwise this is `python -m famkd`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from famkd.cli import main
from famkd.engine import trainer


def signal_at_step() -> None:
    name = os.environ.get("FAMKD_TEST_SIGNAL", "")
    if not name or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    if os.environ.get("RANK", "0") != os.environ["FAMKD_TEST_SIGNAL_RANK"]:
        return
    at_step, log = int(os.environ["FAMKD_TEST_SIGNAL_STEP"]), Path(os.environ["FAMKD_TEST_SIGNAL_LOG"])
    step = trainer.Trainer._step

    def step_then_signal(self: trainer.Trainer, batch: object) -> None:
        step(self, batch)
        if self.state.global_step == at_step:
            log.write_text(f"{time.time()} {os.getpid()}\n")
            os.kill(os.getpid(), getattr(signal, name))

    trainer.Trainer._step = step_then_signal  # type: ignore[method-assign]


if __name__ == "__main__":
    signal_at_step()
    sys.exit(main(sys.argv[1:]))
