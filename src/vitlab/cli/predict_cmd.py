"""`vitlab predict IMAGE...`: the top-5 labels of each image (or sound file, for an audio model: wav, flac, ...).

Every file is checked before any output; the images then run through the model in batches of `--batch-size`, so
memory stays flat however many files are given. On a CPU the model runs as its `optimize_for_cpu_inference` copy
(packed linear weights; the same probabilities up to float32 rounding) unless `--no-optimize` is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub, argv: list[str]) -> None:
    from vitlab.cli.common import add_checkpoint_args

    p = sub.add_parser("predict", help="classify image files and print the top-k labels")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...); sound files for an audio model (wav, flac)")
    add_checkpoint_args(p)
    p.add_argument("--topk", type=int, default=5, help="labels printed per image")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on a CPU, run on pre-packed linear weights (vitlab.runtime.optimize_for_cpu_inference)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vitlab.cli.common import load_model
    from vitlab.cli.text import printable
    from vitlab.data import ImageTransform, read_image
    from vitlab.data.audio import AUDIO_SUFFIXES, SpectrogramTransform, check_audio, read_audio
    from vitlab.data.datasets import check_image
    from vitlab.engine.trainer import resolve_device
    from vitlab.errors import ConfigError
    from vitlab.runtime import optimize_for_cpu_inference

    for flag, v in (("--topk", args.topk), ("--batch-size", args.batch_size)):
        if v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    sounds = [Path(p).suffix.lower() in AUDIO_SUFFIXES for p in args.images]
    if any(sounds) and not all(sounds):
        raise ConfigError("predict takes image files or sound files, not both in one call")
    for path in args.images:  # every file is decoded once before any output: a bad one is reported first
        (check_audio if sounds[0] else check_image)(path)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, args.model).to(device).eval()
    audio_model = hasattr(model.cfg, "num_mel_bins")
    if audio_model != sounds[0]:
        raise ConfigError(
            f"--checkpoint {args.checkpoint} is {'an audio' if audio_model else 'an image'} model but the files are "
            f"{'sounds' if sounds[0] else 'images'}"
        )
    if audio_model:  # the spectrogram the model was trained on, from a 16 kHz mono waveform
        tf, read = SpectrogramTransform.for_model(model), read_audio
    else:
        tf, read = ImageTransform.for_model(model), read_image  # timm's eval crop, read before the model is repacked
    if args.optimize and device.type == "cpu":
        model = optimize_for_cpu_inference(model)  # the plain model is let go: one set of weights stays
    if not model.num_classes:
        raise ConfigError(f"--checkpoint {args.checkpoint} has no classifier (num_classes=0): nothing to predict")
    labels = [printable(c) for c in model.cfg.labels] or [str(i) for i in range(model.num_classes)]
    k = min(args.topk, len(labels))
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        with torch.no_grad():
            x = torch.stack([tf(read(p)) for p in paths]).to(device)
            probs = model(x).float().softmax(dim=-1)
        for path, p in zip(paths, probs, strict=True):
            top = p.topk(k)
            print(printable(path))
            for score, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                print(f"  {labels[idx]:<20} {score:.4f}")
    return 0
