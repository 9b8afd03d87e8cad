"""ImageNet models; importing this package registers them with `famkd.models.create_model`.

resnet18, resnet34 and resnet50 are torchvision's (same state dict), MobileNetV1 is the KD
benchmark's; all take 224 x 224 inputs by default and 1000 classes.
"""

from famkd.models.imagenet import mobilenetv1, resnet  # noqa: F401
