"""CIFAR-100 models; importing this package registers them with `famkd.models.create_model`."""

from famkd.models.cifar import mobilenetv2, resnet, resnet50, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401
