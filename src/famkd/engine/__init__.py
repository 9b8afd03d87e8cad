"""Training engine: the loop, checkpoints, evaluation, teachers, run folders and logs."""

from famkd.engine.checkpoint import load_checkpoint, save_checkpoint
from famkd.engine.evaluate import evaluate, evaluate_checkpoint
from famkd.engine.run_dir import RunDir, resume_config
from famkd.engine.teacher import load_teacher
from famkd.engine.trainer import train

__all__ = [
    "RunDir",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_teacher",
    "resume_config",
    "save_checkpoint",
    "train",
]
