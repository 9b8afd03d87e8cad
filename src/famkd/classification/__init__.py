"""The classification task: CIFAR-100, ImageNet and any registered image dataset, top-1/top-5, the zoo's models.

`TASK` is what the engine needs of classification (famkd.engine.task); `train(cfg)` trains a config of
famkd.config through the engine.
"""

from famkd.classification.task import TASK, ClassificationTask, missing_teacher_message, train

__all__ = ["TASK", "ClassificationTask", "missing_teacher_message", "train"]
