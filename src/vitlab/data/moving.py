"""The embedded video set: one shape per clip, moving left / right / up / down or turning clockwise / anticlockwise.

The label is the motion alone. Shape kind (triangle, L, bar), colour, size, speed and the starting angle are drawn
independently of it, and the shape's position and angle in the reference frame (index T // 2, the frame a one-frame
model sees under uniform sampling) have the same distribution in every class: that frame says nothing about the
label, so a single-frame model stays at chance (1/6) and only a model that compares frames can solve the set.
Shapes are drawn at 4x and box-filtered down, so sub-pixel motion shows as changing edge intensities.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

MOTIONS = ("left", "right", "up", "down", "clockwise", "anticlockwise")
_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# outlines in units of the shape's radius, none symmetric under the small turns between frames
_SHAPES = {
    "triangle": [(0.0, -1.0), (0.7, 0.8), (-0.7, 0.8)],
    "L": [(-0.8, -0.9), (-0.1, -0.9), (-0.1, 0.2), (0.8, 0.2), (0.8, 0.9), (-0.8, 0.9)],
    "bar": [(-1.0, -0.3), (1.0, -0.3), (1.0, 0.3), (-1.0, 0.3)],
}
_SUPER = 4  # supersampling factor


def _coverage(kind: str, centre: tuple[float, float], radius: float, angle: float, size: int) -> np.ndarray:
    """(size, size) float share of each pixel the rotated shape covers (drawn at 4x, box-filtered down)."""
    im = Image.new("L", (size * _SUPER, size * _SUPER), 0)
    c, si = math.cos(angle), math.sin(angle)
    cx, cy = centre
    pts = [((cx + radius * (x * c - y * si)) * _SUPER, (cy + radius * (x * si + y * c)) * _SUPER)
           for x, y in _SHAPES[kind]]  # fmt: skip
    ImageDraw.Draw(im).polygon(pts, fill=255)
    return np.asarray(im.resize((size, size), Image.BOX), dtype=np.float32) / 255


def moving_shapes(count: int, frames: int = 8, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` clips uint8 (count, frames, 3, size, size) and labels (count,) indexing MOTIONS, classes balanced."""
    if frames < 2 or size < 12:
        raise ValueError(f"moving shapes need frames >= 2 and size >= 12, got frames={frames}, size={size}")
    rng = np.random.default_rng(seed)
    clips = np.zeros((count, frames, size, size, 3), dtype=np.uint8)
    labels = np.arange(count) % len(MOTIONS)
    rng.shuffle(labels)
    ref = frames // 2  # the reference frame: same position/angle distribution in every class
    scale = size / 16
    for i, label in enumerate(labels):
        motion = MOTIONS[label]
        kind = list(_SHAPES)[rng.integers(len(_SHAPES))]
        radius = rng.uniform(2.5, 3.5) * scale
        speed = rng.uniform(0.6, 0.9) * scale  # pixels per frame
        turn = math.radians(rng.uniform(20, 35))  # radians per frame
        reach = radius + speed * max(ref, frames - 1 - ref)  # the shape stays inside the frame in every class
        centre = rng.uniform(reach, size - reach, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        colour = rng.integers(140, 256, size=3)
        colour[rng.integers(3)] = rng.integers(0, 80)  # saturated: one channel low
        noise = rng.integers(0, 40, size=(size, size, 3)).astype(np.float32)  # a fixed background per clip
        for t in range(frames):
            dt = t - ref
            if motion in _DIRECTIONS:
                dx, dy = _DIRECTIONS[motion]
                pos, a = (centre[0] + dx * speed * dt, centre[1] + dy * speed * dt), angle
            else:  # image y points down: a growing angle turns clockwise on screen
                pos, a = (centre[0], centre[1]), angle + (turn if motion == "clockwise" else -turn) * dt
            alpha = _coverage(kind, pos, radius, a, size)[..., None]
            clips[i, t] = np.round(noise * (1 - alpha) + colour * alpha).astype(np.uint8)
    return torch.from_numpy(clips).permute(0, 1, 4, 2, 3).contiguous(), torch.from_numpy(labels).long()
