"""Model families. Importing this package registers every variant."""

from vitlab.models import clip, convnext, cpvt, cvt, detr, hybrid, lseg, mixer, nonlocal_net, resnet, swin, vit  # noqa: F401, E501
