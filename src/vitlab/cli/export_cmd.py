"""`vitlab export --checkpoint RUN --format onnx|torchscript|timm|hf --out PATH`: a checkpoint for other tools.

The work is `vitlab.export.export_model`; this module reads the checkpoint and reports where the result went.
"""

from __future__ import annotations

import argparse
import logging


def add_parser(sub, argv: list[str]) -> None:
    from vitlab.cli.common import add_checkpoint_args
    from vitlab.export import FORMATS

    p = sub.add_parser(
        "export",
        help="write a checkpoint as ONNX, TorchScript, a timm or a transformers directory",
        description="onnx and torchscript write one file (batch size free), timm and hf a directory that "
        "timm.create_model('local-dir:OUT', pretrained=True) or transformers' from_pretrained(OUT) loads. "
        "--out must not exist: nothing is ever replaced.",
    )
    add_checkpoint_args(p, device=False)
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt", help="what to write")
    p.add_argument("--out", required=True, help="the file (onnx, torchscript) or directory (timm, hf) to create")
    p.set_defaults(run=run)


# The ONNX exporter's optimiser logs each rewrite at INFO, and torch.onnx warns that torchvision's operators are not
# registered (vitlab never uses them): shown with -v only.
_CHATTY = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING, "torch.onnx": logging.ERROR}


def run(args: argparse.Namespace) -> int:
    from vitlab.cli.common import load_model
    from vitlab.export import check_out, export_model

    if not args.verbose:
        for name, level in _CHATTY.items():
            logging.getLogger(name).setLevel(level)
    out = check_out(args.out)  # before reading the checkpoint: refuse early
    model = load_model(args.checkpoint, args.model)
    export_model(model, args.fmt, out)
    print(f"{args.fmt}: {out}")
    return 0
