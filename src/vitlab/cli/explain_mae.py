"""`vitlab explain mae-reconstruct --checkpoint RUN IMAGE... --out DIR`: what a masked autoencoder fills in.

Writes DIR/mae_reconstruct.png (one row per image: original | masked | reconstruction, MAE Figs. 2-4) and
DIR/mae_reconstruct.json (per image: the masked patches and the masked-patch MSE). The masks come from --seed, so
two checkpoints are compared on the same masks; --mask-ratio shows other ratios (MAE Fig. 4).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(kinds) -> None:
    mr = kinds.add_parser("mae-reconstruct", help="masked-autoencoder reconstructions: original | masked | filled in")
    mr.add_argument("images", nargs="+", help="image files, centre-cropped and resized to the model's input")
    mr.add_argument("--checkpoint", default=None, help="MAE run directory or checkpoint (vitlab or transformers)")
    mr.add_argument("--model", default=None, help="registered MAE name (random weights unless --checkpoint)")
    mr.add_argument("--mask-ratio", type=float, default=None, help="share of patches masked (default: the model's)")
    mr.add_argument("--seed", type=int, default=0, help="seed of the masks")
    mr.add_argument("--out", required=True, help="directory for mae_reconstruct.png and .json (created)")
    mr.set_defaults(run=run_mae_reconstruct)


def _mae_model(args):
    import vitlab
    from vitlab.cli.common import load_model
    from vitlab.errors import ConfigError

    if args.model is None and args.checkpoint is None:
        raise ConfigError("give --checkpoint RUN (a trained MAE) or --model NAME (random weights)")
    model = load_model(args.checkpoint, args.model) if args.checkpoint else vitlab.create_model(args.model)
    if not hasattr(model, "forward_decoder"):
        name = getattr(model, "model_name", type(model).__name__)
        raise ConfigError(f"{name} is not a masked autoencoder: mae-reconstruct needs an MAE checkpoint "
                          "(`vitlab train --task mae`) or a transformers ViTMAEForPreTraining directory")  # fmt: skip
    if args.mask_ratio is not None and not 0 <= args.mask_ratio < 1:
        raise ConfigError(f"--mask-ratio must be in [0, 1), got {args.mask_ratio}")
    return model.eval()


def run_mae_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from vitlab.data import ImageTransform, read_image
    from vitlab.data.datasets import check_image
    from vitlab.engine.report import new_figure, save_figure
    from vitlab.explain.mae import draw_reconstruction, mae_reconstruction

    model = _mae_model(args)
    tf = ImageTransform.for_model(model)
    for path in args.images:
        check_image(path)
    x = torch.stack([tf(read_image(p)) for p in args.images])  # (B, C, S, S) normalised
    rec = mae_reconstruction(model, x, seed=args.seed, mask_ratio=args.mask_ratio)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = new_figure(4.8, 1.7 * len(args.images))
    draw_reconstruction(fig, rec, titles=[Path(p).name for p in args.images])
    save_figure(fig, out / "mae_reconstruct.png")
    rows = [{"image": p, "masked_patches": [int(i) for i in rec.mask[k].nonzero()[0]], "mse_masked": float(rec.loss[k])}
            for k, p in enumerate(args.images)]  # fmt: skip
    ratio = model.cfg.mask_ratio if args.mask_ratio is None else args.mask_ratio
    info = {"model": getattr(model, "model_name", ""), "mask_ratio": ratio, "seed": args.seed,
            "num_patches": model.num_patches, "images": rows}  # fmt: skip
    (out / "mae_reconstruct.json").write_text(json.dumps(info, indent=1))
    print(f"wrote {out / 'mae_reconstruct.png'} and {out / 'mae_reconstruct.json'}")
    for r in rows:
        print(
            f"  {r['image']}: {len(r['masked_patches'])}/{model.num_patches} patches masked, MSE {r['mse_masked']:.4f}"
        )
    return 0
