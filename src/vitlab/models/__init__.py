"""Model families. Importing this package registers every variant."""

from vitlab.models import convnext, cpvt, cvt, mixer, resnet, swin, vit  # noqa: F401
