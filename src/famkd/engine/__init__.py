"""Training engine, the same for every task: the loop, the step, the schedule, checkpoints, run folders and logs.

A task (famkd.engine.task.Task) says what differs; `train(task, cfg)` runs it.
"""

from famkd.engine.checkpoint import save_checkpoint
from famkd.engine.run_dir import RunDir
from famkd.engine.task import Task, TaskData
from famkd.engine.trainer import resume_point, train

__all__ = ["RunDir", "Task", "TaskData", "resume_point", "save_checkpoint", "train"]
