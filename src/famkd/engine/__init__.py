"""Training engine: the loop, checkpoints, evaluation, teachers and run logs."""

from famkd.engine.checkpoint import load_checkpoint, save_checkpoint
from famkd.engine.errors import FamkdError, NonFiniteLossError
from famkd.engine.evaluate import evaluate, evaluate_checkpoint
from famkd.engine.teacher import load_teacher
from famkd.engine.trainer import TrainingInterrupted, resume_config, train

__all__ = [
    "FamkdError",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_teacher",
    "resume_config",
    "save_checkpoint",
    "train",
]
