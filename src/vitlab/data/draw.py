"""Detections drawn onto an image (boxes, class names and scores), for reports and `vitlab detect`."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

# tab10's colours: one per class index, cycling
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip


def draw_detections(image: torch.Tensor | np.ndarray, detections: list[dict], classes: list[str], scale: int = 0):
    """uint8 (C, H, W) tensor or (H, W, C) array + [{"label", "score", "box": xyxy pixels}] -> uint8 (H', W', 3).

    Small images are enlarged (nearest, `scale` times; 0 = enough for a legible label) before drawing.
    """
    arr = image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 2 or arr.shape[2] == 1:
        arr = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
    H, W = arr.shape[:2]
    scale = scale or max(1, -(-256 // max(H, W)))
    im = Image.fromarray(np.ascontiguousarray(arr[..., :3])).resize((W * scale, H * scale), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    for det in sorted(detections, key=lambda d: d["score"]):  # the most confident drawn last, on top
        colour = PALETTE[det["label"] % len(PALETTE)]
        x0, y0, x1, y1 = (v * scale for v in det["box"])
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=2)
        text = f"{classes[det['label']]} {det['score']:.2f}"
        tx, ty = x0, max(0, y0 - 11)
        box = draw.textbbox((tx, ty), text)
        draw.rectangle(box, fill=colour)
        draw.text((tx, ty), text, fill=(255, 255, 255))
    return np.asarray(im)
