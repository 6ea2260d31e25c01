"""`vitlab explain dino-attention`: the last layer's per-head [CLS] attention and its 60%-mass masks (DINO Fig. 3).

The checkpoint may be a DINO run of `vitlab train --task dino` (its teacher is drawn), a transformers DINOv2 / ViT
directory, or any vitlab checkpoint of a model with a class token.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(kinds) -> None:
    p = kinds.add_parser("dino-attention", help="last-layer [CLS] attention per head and its 60%%-mass masks (DINO)")
    p.add_argument("image", help="image file (png, jpg, ...), centre-cropped and resized")
    p.add_argument("--checkpoint", required=True, help="a DINO run, a transformers DINOv2/ViT directory, or a vitlab "
                   "checkpoint of a model with a class token")  # fmt: skip
    p.add_argument("--model", default=None, help="architecture of a checkpoint that does not name it (timm state dict)")
    p.add_argument("--out", required=True, help="directory for dino_attention.png and dino_attention.json (created)")
    p.add_argument("--img-size", type=int, default=None, help="input side, a multiple of the patch (default: the "
                   "model's; DINOv2 and DINO models take any)")  # fmt: skip
    p.add_argument("--keep", type=float, default=0.6, help="share of each head's attention mass the mask keeps")
    p.add_argument("--student", action="store_true", help="a DINO run: draw the student instead of the teacher")
    p.set_defaults(run=run)


def load_encoder(args):
    """A DINO run reads as its teacher (`vitlab.weights.dino`); --student asks for the other network."""
    from vitlab.cli.common import load_model

    if args.student:
        from vitlab.engine.tasks.dino import load_dino_encoder

        return load_dino_encoder(args.checkpoint, "student")
    return load_model(args.checkpoint, args.model)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    from vitlab.data import ImageTransform, read_image
    from vitlab.data.datasets import check_image
    from vitlab.errors import ConfigError
    from vitlab.explain.dino import cls_attention

    if not 0 < args.keep <= 1:
        raise ConfigError(f"--keep must be in (0, 1], got {args.keep}")
    model = load_encoder(args).eval()
    name = getattr(model, "model_name", type(model).__name__)
    size = args.img_size or model.cfg.img_size
    p = getattr(model, "patch_size", 1)
    if size < 1 or (isinstance(p, int) and size % p):
        raise ConfigError(f"--img-size must be a positive multiple of {name}'s patch size {p}, got {size}")
    if size != model.cfg.img_size and getattr(model, "fixed_input_size", False):
        raise ConfigError(f"--img-size {size}: {name} takes {model.cfg.img_size}x{model.cfg.img_size} images only")
    check_image(args.image)
    tf = ImageTransform.for_model(model)
    tf = dataclasses.replace(tf, img_size=size, crop_pct=1.0)
    x = tf(read_image(args.image))[None]  # (1, C, S, S)
    shown = (x[0] * tf._std + tf._mean).clamp(0, 1).permute(1, 2, 0).numpy()
    try:
        att = cls_attention(model, x, keep=args.keep)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    H = att.num_heads
    up = F.interpolate(att.maps[None], scale_factor=att.stride, mode="nearest")[0].numpy()  # (H, S, S)
    masks = F.interpolate(att.masks[None].float(), scale_factor=att.stride, mode="nearest")[0].numpy()
    fig, axes = plt.subplots(2, H + 1, figsize=(2.2 * (H + 1), 4.6), squeeze=False)
    grey = shown if shown.shape[-1] == 3 else shown[..., 0]
    for row in (0, 1):
        axes[row][0].imshow(grey, cmap=None if shown.shape[-1] == 3 else "gray")
        axes[row][0].set_title("input" if row == 0 else f"masks: {args.keep:.0%} of the mass", fontsize=8)
    for h in range(H):
        axes[0][h + 1].imshow(up[h], cmap="inferno")
        axes[0][h + 1].set_title(f"head {h}", fontsize=8)
        axes[1][h + 1].imshow(grey * masks[h][..., None] if shown.shape[-1] == 3 else grey * masks[h], cmap="gray")
        axes[1][h + 1].set_title(f"head {h}: {int(att.masks[h].sum())} patches", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{name}: [CLS] attention of layer {att.layer} ({size}px, {att.maps.shape[1]}x{att.maps.shape[2]} "
                 "patches)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "dino_attention.png", dpi=110)
    plt.close(fig)
    result = {
        "model": name, "checkpoint": str(args.checkpoint), "image": str(args.image), "img_size": size,
        "layer": att.layer, "grid": list(att.maps.shape[1:]), "keep": args.keep,
        "heads": [{"mass_kept": round(float(att.kept[h]), 6), "patches_in_mask": int(att.masks[h].sum()),
                   "attention": att.maps[h].tolist()} for h in range(H)],
    }  # fmt: skip
    (out / "dino_attention.json").write_text(json.dumps(result))
    for h in range(H):
        print(f"head {h}: mask keeps {float(att.kept[h]):.3f} of the mass in {int(att.masks[h].sum())} of "
              f"{att.maps[h].numel()} patches")  # fmt: skip
    print(f"wrote {out / 'dino_attention.png'} and {out / 'dino_attention.json'}")
    return 0
