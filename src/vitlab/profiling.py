"""Parameter and FLOP counts, computed on the meta device (no memory, no time spent on weights)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from vitlab.factory import create_model


@dataclass
class ModelStats:
    name: str
    params: int
    flops: int  # floating-point operations of one forward pass (a multiply-add counts 2)
    img_size: int

    @property
    def gmacs(self) -> float:
        """Multiply-adds, the unit papers call "FLOPs"."""
        return self.flops / 2e9


def model_stats(name: str, img_size: int | None = None, flops: bool = True, **overrides) -> ModelStats:
    with torch.device("meta"):
        model = create_model(name, img_size=img_size, **overrides)
    params = sum(p.numel() for p in model.parameters())
    cfg = model.cfg
    # detectors have no fixed input size: they are counted at their backbone's pretrained_cfg size
    size = getattr(cfg, "img_size", None) or model.pretrained_cfg["input_size"][-1]
    chans = getattr(cfg, "in_chans", None) or model.pretrained_cfg["input_size"][0]
    total = 0
    if flops and hasattr(cfg, "img_size"):  # a detector's FLOPs depend on the image: not counted here
        with torch.device("meta"):
            # an AST's input is its mel bins x frames, not a square
            hw = (cfg.num_mel_bins, cfg.max_length) if hasattr(cfg, "num_mel_bins") else (size, size)
            inputs = [torch.empty(1, chans, *hw)]
            if hasattr(cfg, "num_frames"):  # a video model: one clip (1, T, C, H, W)
                inputs = [torch.empty(1, cfg.num_frames, chans, size, size)]
            if hasattr(model, "encode_text"):  # CLIP: one image and one full-context caption
                inputs.append(torch.zeros(1, cfg.context_length, dtype=torch.long))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(*inputs)
        total = counter.get_total_flops()
    return ModelStats(name, params, total, size)
