"""`vitlab explain ...`: pictures of what happens inside a model, each with the numbers behind it (JSON).

receptive-field   the theoretical receptive field, jump and start of every conv and pool layer (a table; --measure
                  checks each against a brute-force measurement)
erf               effective receptive fields by the gradient method, at several depths, at initialisation and
                  (with --checkpoint) after training
attention         where the class token (or, without one, the average query) looks in each layer, per head with
                  --heads, overlaid on an image; --rollout adds attention rollout (Abnar & Zuidema 2020) where defined
pos-embed         cosine similarity of each patch's learned position embedding with every other (ViT Fig. 7 centre)
patch-embed       principal components of the first-layer (patch-embedding) filters as RGB patches, with their
                  explained variance ratios (ViT Fig. 7 left)
attention-distance
                  mean attention distance of every head against depth, averaged over the images given (ViT Fig. 7
                  right)
gradcam           Grad-CAM (Selvaraju et al. 2017) of a class on the last feature map of a CNN or the token grid of
                  a ViT, so that the two can be compared on one image
dino-attention    the last layer's per-head [CLS] attention and the masks keeping 60% of its mass (DINO Fig. 3;
                  `vitlab.cli.explain_dino`)
tsne, neighbours, open-set
                  penultimate features: a t-SNE map, nearest training images, known vs held-out class scores
                  (cli/explain_features.py)
mae-reconstruct   a masked autoencoder's original | masked | reconstruction per image (MAE Figs. 2-4;
                  `vitlab.cli.explain_mae`)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("explain", help="look inside a model: receptive fields, attention maps, embeddings")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")

    rf = kinds.add_parser("receptive-field", help="theoretical receptive field of every conv and pool layer")
    _model_args(rf)
    rf.add_argument("--measure", action="store_true", help="also measure each field by brute force (slow for big ones)")
    rf.add_argument("--json", dest="json_out", default=None, help="also write the table to this JSON file")
    rf.set_defaults(run=run_receptive_field)

    erf = kinds.add_parser("erf", help="effective receptive fields (gradient method) at several depths")
    _model_args(erf)
    erf.add_argument("--layers", default=None, help="comma-separated module names (default: 4 spread over depth)")
    erf.add_argument("--inits", type=int, default=4, help="random initialisations averaged")
    erf.add_argument("--samples", type=int, default=8, help="random inputs per initialisation")
    erf.add_argument("--out", required=True, help="directory for erf.png and erf.json (created; files replaced)")
    erf.set_defaults(run=run_erf)

    at = kinds.add_parser("attention", help="attention maps of chosen layers (and rollout) overlaid on an image")
    _model_args(at, img_size=False)
    _image_args(at, "attention.png and attention.json (rollout.png with --rollout)")
    at.add_argument("--layers", default=None, help="comma-separated attention-layer indices, negatives count back "
                    "(default: all)")  # fmt: skip
    at.add_argument("--heads", action="store_true", help="one map per head (default: the mean over heads)")
    at.add_argument("--rollout", action="store_true", help="also attention rollout over all layers (ViT-like models)")
    at.add_argument("--query", default=None, choices=("cls", "dist", "mean"),
                    help="whose attention: the class token, DeiT's distillation token, or the mean over patch queries "
                    "(default: the class token where a layer has one, else the mean)")  # fmt: skip
    at.set_defaults(run=run_attention)

    pe = kinds.add_parser("pos-embed", help="cosine similarity between the learned position embeddings of patches")
    _model_args(pe, img_size=False)
    pe.add_argument("--out", required=True, help="directory for pos_embed.png and pos_embed.json (created)")
    pe.set_defaults(run=run_pos_embed)

    pc = kinds.add_parser("patch-embed", help="principal components of the first-layer (patch-embedding) filters")
    _model_args(pc, img_size=False)
    pc.add_argument("--components", type=int, default=28, help="components drawn (ViT Fig. 7: 28)")
    pc.add_argument("--out", required=True, help="directory for patch_embed.png and patch_embed.json (created)")
    pc.set_defaults(run=run_patch_embed)

    ad = kinds.add_parser("attention-distance", help="mean attention distance of every head against depth")
    _model_args(ad, img_size=False)
    ad.add_argument("images", nargs="+", help="image files the distances are averaged over (a few suffice)")
    ad.add_argument("--out", required=True, help="directory for attention_distance.png and .json (created)")
    ad.set_defaults(run=run_attention_distance)

    gc = kinds.add_parser("gradcam", help="Grad-CAM of a class on the last feature map (CNNs) or token grid (ViTs)")
    _model_args(gc, img_size=False)
    _image_args(gc, "gradcam.png and gradcam.json")
    gc.add_argument("--target", default=None, help="class index or label (default: the top prediction)")
    gc.set_defaults(run=run_gradcam)

    from vitlab.cli import explain_dino, explain_mae
    from vitlab.cli.explain_features import add_feature_parsers

    explain_dino.add_parser(kinds)  # dino-attention
    add_feature_parsers(kinds)  # tsne, neighbours, open-set
    explain_mae.add_parser(kinds)  # mae-reconstruct


def _model_args(p, img_size: bool = True) -> None:
    """--model/--checkpoint, and --img-size where the command builds its own inputs (images are resized to the
    model's own size instead, as for evaluation)."""
    p.add_argument("--model", default=None, help="registered model name (random weights unless --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="vitlab run directory or checkpoint (trained weights)")
    if img_size:
        p.add_argument("--img-size", type=int, default=None, help="input side (default: the model's)")


def _image_args(p, outputs: str) -> None:
    p.add_argument("image", help="image file (png, jpg, ...), centre-cropped and resized as for evaluation")
    p.add_argument("--out", required=True, help=f"directory for {outputs} (created; files replaced)")


def _load(args):
    """(model at random init or None, trained model or None, architecture name)."""
    import vitlab
    from vitlab.cli.common import load_model
    from vitlab.errors import ConfigError

    if args.model is None and args.checkpoint is None:
        raise ConfigError("give --model NAME or --checkpoint RUN")
    if getattr(args, "img_size", None) is not None and args.img_size < 1:
        raise ConfigError(f"--img-size must be >= 1, got {args.img_size}")
    trained = load_model(args.checkpoint, args.model) if args.checkpoint else None
    name = args.model or trained.model_name
    return vitlab.create_model(name, **_arch(trained)), trained, name


def _arch(trained) -> dict:
    """The sizes a fresh initialisation needs to match a trained model's (channels, classes)."""
    return {} if trained is None else {"in_chans": trained.in_chans, "num_classes": trained.num_classes}


def _img_size(args, model) -> int:
    return args.img_size or model.pretrained_cfg["input_size"][-1]


def run_receptive_field(args: argparse.Namespace) -> int:
    from vitlab.errors import ConfigError
    from vitlab.explain.receptive import measured_extent, receptive_fields

    model, trained, name = _load(args)
    model = trained or model
    fields = receptive_fields(model)
    if not fields:
        raise ConfigError(f"{name} has no conv or pool layers before its first global op")
    img = _img_size(args, model)
    rows = []
    print(f"{name}: receptive field in input pixels (size, jump between units, centre of unit 0)")
    print(f"{'layer':<36} {'kind':<8} {'k':>3} {'s':>3} {'p':>4} {'d':>3} {'size':>6} {'jump':>5} {'start':>7}"
          + ("   measured" if args.measure else ""))  # fmt: skip
    for f in fields:
        row = f.as_dict()
        line = (f"{f.name:<36} {f.kind:<8} {f.kernel:>3} {f.stride:>3} {f.padding:>4g} {f.dilation:>3} "
                f"{f.size:>6g} {f.jump:>5g} {f.start:>7g}")  # fmt: skip
        if args.measure and f.size <= MEASURE_LIMIT:
            side = _room(model, f, img)
            got = measured_extent(model, f.name, side)
            row["measured"] = list(got)
            line += f"   {got[0]}x{got[1]} at {side}px" + ("" if got == (f.size, f.size) else "  DIFFERS")
        elif args.measure:
            line += f"   (over {MEASURE_LIMIT}px: not measured)"
        rows.append(row)
        print(line)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"model": name, "layers": rows}, indent=1))
        print(f"wrote {args.json_out}")
    return 0


MEASURE_LIMIT = 200  # --measure runs 2 * side forwards at side >= the field: bigger fields take minutes


def _room(model, f, img: int) -> int:
    """An input side at which the middle unit of layer `f` has its whole field inside the image."""
    import torch

    from vitlab.explain.receptive import layer_output

    side = max(img, int(f.size + 2 * f.jump + 2))
    for _ in range(8):
        n = layer_output(model, f.name, torch.zeros(1, model.in_chans, side, side)).shape[-1]
        centre = f.start + ((n - 1) // 2) * f.jump
        if centre - (f.size - 1) / 2 >= 0 and centre + (f.size - 1) / 2 <= side - 1:
            return side
        side += int(f.jump)
    return side


def _default_layers(model) -> list[str]:
    from vitlab.explain.receptive import receptive_fields

    convs = [f.name for f in receptive_fields(model) if f.kind == "conv"]
    blocks = [n for n, _ in model.named_modules() if n.count(".") == 1 and n.startswith("blocks.")]
    names = convs if len(convs) > 1 else blocks
    if not names:
        return convs
    picks = sorted({round(i * (len(names) - 1) / 3) for i in range(4)})
    return [names[i] for i in picks]


def run_erf(args: argparse.Namespace) -> int:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    import vitlab
    from vitlab.errors import ConfigError
    from vitlab.explain.receptive import effective_field, extent, mass_side, receptive_fields, rms_radius

    for flag, v in (("--inits", args.inits), ("--samples", args.samples)):
        if v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    model, trained, name = _load(args)
    layers = args.layers.split(",") if args.layers else _default_layers(model)
    known = dict(model.named_modules())
    for layer in layers:
        if layer not in known:
            raise ConfigError(f"--layers: {name} has no module {layer!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    img = _img_size(args, model)
    theory = {f.name: f.size for f in receptive_fields(model)}
    inits = []
    for seed in range(args.inits):
        torch.manual_seed(seed)
        inits.append(vitlab.create_model(name, **_arch(trained)))
    rows = [("initialisation", inits)] + ([("trained", [trained])] if trained is not None else [])
    result = {"model": name, "img_size": img, "layers": {}}
    fig, axes = plt.subplots(len(rows), len(layers), figsize=(3 * len(layers), 3 * len(rows)), squeeze=False)
    for j, layer in enumerate(layers):
        trf = theory.get(layer, math.inf)
        entry = {"theoretical": None if math.isinf(trf) else trf}
        for i, (label, models) in enumerate(rows):
            erf = effective_field(models, layer, img, samples=args.samples)
            side, support, rms = mass_side(erf, 0.9), extent(erf > 0), rms_radius(erf)
            entry[label] = {"side_90": side, "rms_radius": round(rms, 3), "support": list(support)}
            ax = axes[i][j]
            ax.imshow(erf.numpy(), cmap="magma")
            rf = "" if math.isinf(trf) else f", RF {trf:g}"
            ax.set_title(f"{layer}\n{label}: rms {rms:.1f}px, 90% in {side}px{rf}", fontsize=8)
            ax.axis("off")
        result["layers"][layer] = entry
    fig.suptitle(f"{name}: effective receptive field (|d centre unit / d input|)")
    fig.tight_layout()
    fig.savefig(out / "erf.png", dpi=120)
    plt.close(fig)
    (out / "erf.json").write_text(json.dumps(result, indent=1))
    for layer, e in result["layers"].items():
        parts = [
            f"{k}: rms radius {v['rms_radius']}px, 90% in {v['side_90']}px" for k, v in e.items() if isinstance(v, dict)
        ]
        print(f"{layer:<32} RF {e['theoretical'] or 'global'}: " + ", ".join(parts))
    print(f"wrote {out / 'erf.png'} and {out / 'erf.json'}")
    return 0


# ----- attention ------------------------------------------------------------------------------------------------


def _load_image(path: str, model):
    """(model input (1, C, S, S), the same image for display (S, S, C) in [0, 1])."""
    from vitlab.data import ImageTransform, read_image
    from vitlab.data.datasets import check_image

    check_image(path)
    tf = ImageTransform.for_model(model)
    x = tf(read_image(path))  # (C, S, S), normalised
    shown = (x * tf._std + tf._mean).clamp(0, 1).permute(1, 2, 0)  # (S, S, C)
    return x[None], shown.numpy()


def _int_list(text: str, flag: str) -> list[int]:
    from vitlab.errors import ConfigError

    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers (e.g. 0,5,-1), got {text!r}") from None


def _attention_model(args):
    """The model (trained, else random init) in eval mode, or a ConfigError for a model without attention."""
    from vitlab.errors import ConfigError
    from vitlab.explain import attention_layers

    model, trained, name = _load(args)
    model = (trained or model).eval()
    try:
        count = len(attention_layers(model))
    except ValueError:
        raise ConfigError(
            f"{name} has no attention layers, so it has no attention maps: for a CNN or an MLP model try "
            f"`vitlab explain gradcam --model {name} IMAGE --out DIR`"
        ) from None
    return model, name, count


def _overlay(ax, image, amap, stride: float, title: str) -> None:
    """Draw a token map (kh, kw), one cell per token of `stride` pixels, over the image (S, S, C)."""
    S = image.shape[0]
    ax.imshow(image if image.shape[-1] == 3 else image[..., 0], cmap=None if image.shape[-1] == 3 else "gray")
    kh, kw = amap.shape
    extent = (-0.5, kw * stride - 0.5, kh * stride - 0.5, -0.5)  # a padded grid (Swin) may reach past the image
    ax.imshow(amap, cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest")
    ax.set_xlim(-0.5, S - 0.5)
    ax.set_ylim(S - 0.5, -0.5)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def _query(args) -> int | str | None:
    return {"cls": 0, "dist": 1, "mean": "mean", None: None}[args.query]


def _query_name(q, layer) -> str:
    if q is None:
        q = 0 if layer.q_prefix else "mean"
    return {0: "class token", 1: "distillation token", "mean": "mean over patch queries"}.get(q, f"prefix token {q}")


def _short(q, layer) -> str:
    if q is None:
        q = 0 if layer.q_prefix else "mean"
    return {0: "cls", 1: "dist"}.get(q, str(q))


def run_attention(args: argparse.Namespace) -> int:
    from vitlab.errors import ConfigError
    from vitlab.explain.attention import _layer_indices
    from vitlab.explain.grid import grid_attention, grid_rollout

    model, name, count = _attention_model(args)
    layers = _int_list(args.layers, "--layers") if args.layers else None
    try:
        _layer_indices(layers, count)
    except ValueError as e:
        raise ConfigError(f"--layers: {name}: {e}") from None
    if args.query == "dist" and getattr(model, "num_prefix_tokens", 0) < 2:
        raise ConfigError(f"--query dist: {name} has no distillation token (only DeiT's *_distilled_* models do)")
    x, image = _load_image(args.image, model)
    try:
        found = grid_attention(model, x, layers)
    except ValueError as e:  # tokens that cannot be placed on the image
        raise ConfigError(f"{name}: {e}") from None
    if args.query == "cls" and not all(g.q_prefix for g in found.values()):
        no_cls = [i for i, g in found.items() if not g.q_prefix]
        raise ConfigError(f"--query cls: {name} has no class token in attention layer(s) {no_cls}; use --query mean")
    rollout = None
    if args.rollout:
        try:
            rollout = grid_rollout(model, x)
        except ValueError as e:
            why = str(e).split("; use")[0]  # the library's pointer to its own functions: not for the CLI
            raise ConfigError(f"--rollout: {name}: {why}; drop --rollout for the per-layer maps") from None
    maps = {i: g.query_map(_query(args))[0] for i, g in found.items()}  # (H, kh, kw)
    rolled = rollout.query_map(_query(args))[0, 0] if rollout is not None else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout.png").unlink(missing_ok=True)  # not left over from an earlier run with --rollout
    plt = _plt()
    result = {"model": name, "image": args.image, "img_size": image.shape[0], "layers": {}}
    if args.heads:  # a row per layer: the mean, then each head
        rows, cols = len(maps), 1 + max(m.shape[0] for m in maps.values())
    else:  # up to 6 layers a row
        rows, cols = -(-len(maps) // 6), min(len(maps), 6)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, (i, m) in enumerate(maps.items()):
        g, q = found[i], _query(args)
        mean = m.mean(dim=0)
        entry = {
            "query": _query_name(q, g),
            "key_grid": list(g.k_grid),
            "token_stride_px": g.k_stride,
            "mean_over_heads": [[round(v, 5) for v in row] for row in mean.tolist()],
        }
        if args.heads:
            entry["heads"] = [[[round(v, 5) for v in row] for row in h.tolist()] for h in m]
            who = _short(q, g)
            _overlay(axes[n][0], image, mean.numpy(), g.k_stride, f"layer {i} ({who}): mean over heads")
            for h in range(m.shape[0]):
                _overlay(axes[n][h + 1], image, m[h].numpy(), g.k_stride, f"layer {i} ({who}) head {h}")
        else:
            _overlay(axes[n // cols][n % cols], image, mean.numpy(), g.k_stride, f"layer {i} ({_short(q, g)})")
        result["layers"][str(i)] = entry
    queries = ", ".join(sorted({f"{_short(_query(args), g)} = {_query_name(_query(args), g)}" for g in found.values()}))
    fig.suptitle(f"{name}: attention on the image, {len(found)} of {count} layers ({queries})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "attention.png", dpi=120)
    plt.close(fig)
    written = [out / "attention.png"]
    if rolled is not None:
        result["rollout"] = {
            "query": _query_name(_query(args), rollout),
            "key_grid": list(rollout.k_grid),
            "map": [[round(v, 5) for v in row] for row in rolled.tolist()],
        }
        fig, ax = plt.subplots(figsize=(3, 3.2))
        _overlay(ax, image, rolled.numpy(), rollout.k_stride, f"{name}: attention rollout")
        fig.tight_layout()
        fig.savefig(out / "rollout.png", dpi=120)
        plt.close(fig)
        written.append(out / "rollout.png")
    (out / "attention.json").write_text(json.dumps(result, indent=1))
    for i, e in result["layers"].items():
        peak = max((v, r, c) for r, row in enumerate(e["mean_over_heads"]) for c, v in enumerate(row))
        print(f"layer {i:>3}: {e['query']} on a {e['key_grid'][0]}x{e['key_grid'][1]} grid, "
              f"peak {peak[0]:.3f} at token ({peak[1]}, {peak[2]})")  # fmt: skip
    print("wrote " + ", ".join(str(p) for p in written) + f" and {out / 'attention.json'}")
    return 0


# ----- embeddings -----------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mosaic(tiles, cols: int, gap: int = 1):
    """Tiles (n, h, w[, C]) -> one image with `gap` NaN pixels between them, `cols` tiles a row."""
    import numpy as np

    n, h, w = tiles.shape[:3]
    rows = -(-n // cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *tiles.shape[3:]), np.nan)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = t
    return out


def run_pos_embed(args: argparse.Namespace) -> int:
    from vitlab.errors import ConfigError
    from vitlab.explain.embeddings import position_similarity, similarity_by_distance

    model, trained, name = _load(args)
    model = trained or model
    try:
        sim = position_similarity(model)  # (Hp, Wp, Hp, Wp)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    Hp, Wp = sim.shape[:2]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 7.4))
    shown = ax.imshow(_mosaic(sim.reshape(Hp * Wp, Hp, Wp).numpy(), Wp), cmap="viridis", vmin=-1, vmax=1)
    ax.set_xticks([(Wp + 1) * c + (Wp - 1) / 2 for c in range(Wp)], [str(c + 1) for c in range(Wp)], fontsize=6)
    ax.set_yticks([(Hp + 1) * r + (Hp - 1) / 2 for r in range(Hp)], [str(r + 1) for r in range(Hp)], fontsize=6)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="cosine similarity")
    ax.set_title(f"{name}: position embedding similarity ({'trained' if trained is not None else 'random init'})")
    fig.tight_layout()
    fig.savefig(out / "pos_embed.png", dpi=120)
    plt.close(fig)
    by_distance = similarity_by_distance(sim)
    result = {
        "model": name,
        "grid": [Hp, Wp],
        "mean_similarity_by_grid_distance": {str(d): round(v, 5) for d, v in by_distance.items()},
        "similarity": [[round(v, 4) for v in row] for row in sim.reshape(Hp * Wp, Hp * Wp).tolist()],
    }
    (out / "pos_embed.json").write_text(json.dumps(result, indent=1))
    near = [f"{d:g}: {v:.3f}" for d, v in list(by_distance.items())[:4]]
    print(f"{name}: {Hp}x{Wp} position embeddings; mean similarity at grid distance " + ", ".join(near))
    print(f"wrote {out / 'pos_embed.png'} and {out / 'pos_embed.json'}")
    return 0


def run_patch_embed(args: argparse.Namespace) -> int:
    from vitlab.errors import ConfigError
    from vitlab.explain.embeddings import first_conv, principal_components

    if args.components < 1:
        raise ConfigError(f"--components must be >= 1, got {args.components}")
    model, trained, name = _load(args)
    model = trained or model
    try:
        layer, conv = first_conv(model)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    comps, ratio = principal_components(conv.weight, args.components)  # (k, C, kh, kw), (k,)
    k, C = comps.shape[:2]
    lo = comps.flatten(1).min(dim=1).values[:, None, None, None]
    hi = comps.flatten(1).max(dim=1).values[:, None, None, None]
    tiles = ((comps - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1)  # (k, kh, kw, C) in [0, 1]
    tiles = tiles if C == 3 else tiles.mean(dim=-1)  # RGB patches, else grey (the mean over the input channels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    cols = min(k, 7)
    fig, ax = plt.subplots(figsize=(1.2 * cols + 0.5, 1.2 * -(-k // cols) + 0.8))
    ax.imshow(_mosaic(tiles.numpy(), cols), cmap=None if C == 3 else "gray", interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"{name}: top {k} principal components of {layer}\n({ratio.sum():.1%} of the filters' variance)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out / "patch_embed.png", dpi=120)
    plt.close(fig)
    result = {
        "model": name,
        "layer": layer,
        "filters": conv.weight.shape[0],
        "kernel": list(conv.kernel_size),
        "stride": list(conv.stride),
        "explained_variance_ratio": [round(v, 6) for v in ratio.tolist()],
    }
    (out / "patch_embed.json").write_text(json.dumps(result, indent=1))
    print(f"{name}: {layer} ({conv.weight.shape[0]} filters of {C}x{conv.kernel_size[0]}x{conv.kernel_size[1]}); "
          f"top {k} components explain {ratio.sum():.1%} of their variance, the first {ratio[0]:.1%}")  # fmt: skip
    print(f"wrote {out / 'patch_embed.png'} and {out / 'patch_embed.json'}")
    return 0


# ----- attention distance ---------------------------------------------------------------------------------------


def run_attention_distance(args: argparse.Namespace) -> int:
    import torch

    from vitlab.errors import ConfigError
    from vitlab.explain.distance import attention_distances

    model, name, count = _attention_model(args)
    x = torch.cat([_load_image(path, model)[0] for path in args.images])  # every file checked before any work
    try:
        dist = attention_distances(model, x)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for i, d in dist.items():
        ax.scatter([i] * len(d), d.tolist(), s=14, color="tab:blue", alpha=0.7)
    ax.set_xlabel("network depth (attention layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, x.shape[-1])
    ax.set_title(f"{name}: one dot per head, {len(args.images)} image(s) of {x.shape[-1]}px", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "attention_distance.png", dpi=120)
    plt.close(fig)
    result = {
        "model": name,
        "images": args.images,
        "img_size": x.shape[-1],
        "layers": {str(i): [round(v, 4) for v in d.tolist()] for i, d in dist.items()},
    }
    (out / "attention_distance.json").write_text(json.dumps(result, indent=1))
    for i, d in dist.items():
        print(
            f"layer {i:>3}: {len(d)} heads, mean attention distance {d.min():.1f}-{d.max():.1f}px (mean {d.mean():.1f})"
        )
    print(f"wrote {out / 'attention_distance.png'} and {out / 'attention_distance.json'}")
    return 0


# ----- Grad-CAM -------------------------------------------------------------------------------------------------


def _target(spec: str | None, model, name: str) -> int | None:
    from vitlab.errors import ConfigError

    if spec is None:
        return None
    labels = list(model.cfg.labels)
    if spec in labels:
        return labels.index(spec)
    try:
        index = int(spec)
    except ValueError:
        known = f"one of its labels ({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''})" if labels else ""
        raise ConfigError(
            f"--target {spec!r}: give a class index in [0, {model.num_classes - 1}]" + (f" or {known}" if known else "")
        ) from None
    if not 0 <= index < model.num_classes:
        raise ConfigError(f"--target {index}: {name} has {model.num_classes} classes, so indices lie in "
                          f"[0, {model.num_classes - 1}]")  # fmt: skip
    return index


def run_gradcam(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F

    from vitlab.errors import ConfigError
    from vitlab.explain.gradcam import cam_layer, grad_cam

    model, trained, name = _load(args)
    model = (trained or model).eval()
    if not model.num_classes:
        raise ConfigError(f"{name} has no classifier (num_classes=0): Grad-CAM needs a class score")
    target = _target(args.target, model, name)
    x, image = _load_image(args.image, model)
    try:
        layer = cam_layer(model)
        cam, chosen = grad_cam(model, x, target, layer)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    with torch.no_grad():
        probs = model(x).softmax(dim=-1)[0]
    c = int(chosen[0])
    label = model.cfg.labels[c] if c < len(model.cfg.labels) else str(c)
    cam = cam[0]  # (h, w)
    peak = cam.max().item()
    S = image.shape[0]
    shown = F.interpolate(cam[None, None], size=(S, S), mode="bilinear", align_corners=False)[0, 0]
    shown = shown / peak if peak > 0 else shown
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.3))
    grey = image.shape[-1] != 3
    for ax in axes:
        ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None)
        ax.axis("off")
    axes[1].imshow(shown.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[0].set_title("input", fontsize=8)
    axes[1].set_title(
        f"Grad-CAM of {label!r} (p={probs[c]:.3f})\non {layer}, {cam.shape[0]}x{cam.shape[1]}", fontsize=8
    )
    fig.suptitle(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "gradcam.png", dpi=120)
    plt.close(fig)
    result = {
        "model": name,
        "image": args.image,
        "layer": layer,
        "target": c,
        "label": label,
        "probability": round(probs[c].item(), 6),
        "cam": [[round(v, 6) for v in row] for row in cam.tolist()],
    }
    (out / "gradcam.json").write_text(json.dumps(result, indent=1))
    print(f"{name}: Grad-CAM of class {c} ({label}, p={probs[c]:.3f}) on {layer}, a {cam.shape[0]}x{cam.shape[1]} map")
    if peak == 0:
        print("note: the map is zero everywhere (no positive evidence; a zero-initialised head, as at random init, "
              "gives no gradient): use --checkpoint for a trained model")  # fmt: skip
    print(f"wrote {out / 'gradcam.png'} and {out / 'gradcam.json'}")
    return 0
