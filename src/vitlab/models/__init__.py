"""Model families. Importing this package registers every variant."""

from vitlab.models import (  # noqa: F401
    ast,
    clip,
    convnext,
    cpvt,
    cvt,
    detr,
    hybrid,
    lseg,
    mae,
    mixer,
    nonlocal_net,
    resnet,
    resnet_attention,
    swin,
    timesformer,
    vit,
    vivit,
)
