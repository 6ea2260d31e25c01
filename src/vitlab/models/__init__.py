"""Model families. Importing this package registers every variant."""

from vitlab.models import ast, clip, convnext, cpvt, cvt, detr, hybrid, mixer, nonlocal_net, resnet, swin, vit  # noqa: F401
