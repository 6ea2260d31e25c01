"""Model families. Importing this package registers every variant."""

from vitlab.models import (  # noqa: F401
    clip,
    convnext,
    cpvt,
    cvt,
    detr,
    hybrid,
    mixer,
    nonlocal_net,
    resnet,
    swin,
    timesformer,
    vit,
    vivit,
)
