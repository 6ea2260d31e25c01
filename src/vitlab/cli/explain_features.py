"""`vitlab explain tsne | neighbours | open-set`: what a trained classifier's penultimate features hold.

tsne         a t-SNE map of the features of a data split, one colour per class (held-out classes of an open-set run
             drawn as crosses)
neighbours   for each query image, the k training images closest in feature space (cosine), as a picture grid
open-set     known test images against the test images of classes held out of training (`vitlab train --hold-out`):
             AUROC and FPR@95 of the max-logit, max-softmax and energy scores, with their histograms

The data default to the run's own (its config.json: data spec, test fraction, held-out classes), so the splits are
the ones the model was trained and tested on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_feature_parsers(kinds) -> None:
    from vitlab.cli.common import add_checkpoint_args

    ts = kinds.add_parser("tsne", help="t-SNE map of the penultimate features, coloured by class")
    add_checkpoint_args(ts)
    _data_args(ts)
    ts.add_argument("--split", choices=("train", "test"), default="test", help="which split to map (default: test)")
    ts.add_argument("--max-images", type=int, default=2000, help="map at most this many images (a stratified draw)")
    ts.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (lowered for small sets)")
    ts.add_argument("--seed", type=int, default=0, help="seed of the t-SNE optimisation and of the draw")
    ts.add_argument("--out", required=True, help="directory for tsne.png and tsne.json (created; files replaced)")
    ts.set_defaults(run=run_tsne)

    nn_ = kinds.add_parser("neighbours", help="the k training images nearest each query in feature space (faiss)")
    add_checkpoint_args(nn_)
    _data_args(nn_)
    nn_.add_argument("images", nargs="+", help="query image files (png, jpg, ...)")
    nn_.add_argument("-k", type=int, default=8, help="neighbours per query (default: 8)")
    nn_.add_argument("--split", choices=("train", "test"), default="train", help="the images searched (default: train)")
    nn_.add_argument("--out", required=True, help="directory for neighbours.png and neighbours.json (created)")
    nn_.set_defaults(run=run_neighbours)

    os_ = kinds.add_parser("open-set", help="known vs held-out classes: AUROC, FPR@95 of max-logit/softmax/energy")
    add_checkpoint_args(os_)
    _data_args(os_)
    os_.add_argument("--held-out", default=None, help="the classes left out of training, comma-separated names or "
                     "indices (default: the run's --hold-out)")  # fmt: skip
    os_.add_argument("--out", required=True, help="directory for open_set.png and open_set.json (created)")
    os_.set_defaults(run=run_open_set)


def _data_args(p) -> None:
    p.add_argument("--data", default=None, help="data spec, as for train (default: the run's, else digits)")
    p.add_argument("--batch-size", type=int, default=256)


# ----- shared steps -------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _saved_run(checkpoint: str):
    """The TrainConfig of a run directory (its config.json), or None for a bare file or an unreadable config."""
    from vitlab.engine.trainer import config_from_json
    from vitlab.errors import CheckpointError

    cfg = Path(checkpoint) / "config.json"
    if not cfg.is_file():
        return None
    try:
        return config_from_json(json.loads(cfg.read_text(encoding="utf-8")), str(cfg))
    except (CheckpointError, json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None


class _Setup:
    """The trained model and the data it was trained on, split into known classes (and held-out ones, if any)."""

    def __init__(self, args: argparse.Namespace, held_out: str | None = None) -> None:
        from vitlab.cli.common import load_model
        from vitlab.data import hold_out_classes, load_data, resolve_classes
        from vitlab.engine.tasks import get_task
        from vitlab.engine.trainer import resolve_device
        from vitlab.errors import ConfigError

        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        saved = _saved_run(args.checkpoint)
        self.device = resolve_device(args.device)
        self.model = load_model(args.checkpoint, args.model).eval()
        self.name = self.model.model_name
        self.data = args.data or (saved.data if saved is not None and saved.data else "digits")
        test_fraction = saved.test_fraction if saved is not None else 0.2
        run_held = getattr(saved.task_cfg, "hold_out", "") if saved is not None else ""
        if held_out is not None and run_held and held_out.replace(" ", "") != run_held.replace(" ", ""):
            raise ConfigError(
                f"--held-out {held_out}: --checkpoint {args.checkpoint} was trained with --hold-out {run_held}; "
                "leave --held-out out to score the classes the run held out"
            )
        self.held_text = held_out if held_out is not None else run_held
        splits = load_data(self.data, test_fraction)
        self.held = None
        if self.held_text:
            where = "--held-out" if held_out is not None else f"the run's --hold-out {run_held}"
            idx = resolve_classes(self.held_text, list(splits.classes), f"{where} (--data {self.data})")
            splits, self.held = hold_out_classes(splits, idx)
            seen = set(self.model.cfg.labels) & set(self.held.classes)
            if seen:
                raise ConfigError(
                    f"--checkpoint {args.checkpoint} was trained on class(es) {', '.join(sorted(seen))}: held-out "
                    f"classes must be unseen in training; train with --hold-out {self.held_text}"
                )
        self.known = splits
        if getattr(self.model, "num_classes", 0):
            get_task("classification").check_model(self.model, splits, f"--data {self.data}")
        self.batch_size = args.batch_size

    def features(self, dataset):
        from vitlab.data import ImageTransform, TransformedDataset
        from vitlab.explain.features import extract_features

        tf = ImageTransform.for_model(self.model)  # as for evaluation: no augmentation
        return extract_features(self.model, TransformedDataset(dataset, tf), self.batch_size, self.device)


def _shown(img):
    """A data set's uint8 image (C, H, W) as an array for imshow: (H, W, 3) or (H, W) in [0, 1]."""
    a = img.float().div(255)
    return a[0].numpy() if a.shape[0] == 1 else a.permute(1, 2, 0).numpy()


def _draw(ax, image, title: str) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


# ----- t-SNE --------------------------------------------------------------------------------------------------------


def run_tsne(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from vitlab.errors import ConfigError
    from vitlab.explain.features import tsne_embedding

    if args.max_images < 3:
        raise ConfigError(f"--max-images must be >= 3 (t-SNE needs 3 points), got {args.max_images}")
    if not args.perplexity > 0:
        raise ConfigError(f"--perplexity must be > 0, got {args.perplexity}")
    s = _Setup(args)
    groups = [(getattr(s.known, args.split), s.known.classes, False)]
    if s.held is not None:
        groups.append((getattr(s.held, args.split), s.held.classes, True))
    total = sum(len(ds) for ds, _, _ in groups)
    if total < 3:
        raise ConfigError(f"--data {s.data}: the {args.split} split has {total} image(s); t-SNE needs 3")
    feats, names, held_flags = [], [], []
    rng = np.random.default_rng(args.seed)
    for ds, classes, held in groups:
        if total > args.max_images:  # the same share of every class, at least one image each
            labels = np.asarray(ds.targets)
            members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
            picks = [rng.permutation(m)[: max(1, round(len(m) * args.max_images / total))] for m in members]
            ds = ds.subset(np.sort(np.concatenate(picks)))
        f = s.features(ds)
        feats.append(f.features)
        names += [classes[y] for y in f.labels.tolist()]
        held_flags += [held] * len(f.labels)
    xy = tsne_embedding(torch.cat(feats), seed=args.seed, perplexity=args.perplexity)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(set(names)) <= 10 else "tab20")
    order = list(dict.fromkeys(s.known.classes + (s.held.classes if s.held is not None else [])))
    flags = np.array(held_flags)
    for c, name in enumerate(order):
        sel = np.array([n == name for n in names])
        if not sel.any():
            continue
        held = bool(flags[sel].any())
        ax.scatter(*xy[sel].T, s=40 if held else 10, marker="x" if held else "o", color=cmap(c % cmap.N),
                   label=f"{name} (held out)" if held else name, alpha=0.8)  # fmt: skip
    ax.legend(fontsize=7, markerscale=1.5, loc="best", ncol=1 if len(order) <= 12 else 2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{s.name}: t-SNE of penultimate features, {len(names)} {args.split} images of {s.data}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "tsne.png", dpi=120)
    plt.close(fig)
    result = {
        "model": s.name,
        "data": s.data,
        "split": args.split,
        "held_out": s.held.classes if s.held is not None else [],
        "feature_dim": int(feats[0].shape[1]),
        "points": [
            {"x": round(float(p[0]), 4), "y": round(float(p[1]), 4), "class": n, "held_out": h}
            for p, n, h in zip(xy, names, held_flags, strict=True)
        ],
    }
    (out / "tsne.json").write_text(json.dumps(result, indent=1))
    held = f", held out: {', '.join(s.held.classes)}" if s.held is not None else ""
    print(f"{s.name}: t-SNE of {len(names)} {args.split} images ({feats[0].shape[1]}-d penultimate features), "
          f"{len(order)} classes{held}")  # fmt: skip
    print(f"wrote {out / 'tsne.png'} and {out / 'tsne.json'}")
    return 0


# ----- nearest neighbours -------------------------------------------------------------------------------------------


def run_neighbours(args: argparse.Namespace) -> int:
    import logging

    import torch

    from vitlab.data import ImageTransform, read_image
    from vitlab.data.datasets import check_image
    from vitlab.errors import ConfigError
    from vitlab.explain.features import FeatureIndex, penultimate_features

    if args.k < 1:
        raise ConfigError(f"-k must be >= 1, got {args.k}")
    for path in args.images:  # every file checked before any work
        check_image(path)
    s = _Setup(args)
    pool = getattr(s.known, args.split)
    if args.k > len(pool):
        raise ConfigError(f"-k {args.k}: the {args.split} split of {s.data} has only {len(pool)} images")
    indexed = s.features(pool)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # not its loader's search for CPU-specific builds at INFO
    index = FeatureIndex(indexed.features)
    tf = ImageTransform.for_model(s.model)
    raw = [read_image(p) for p in args.images]
    x = torch.stack([tf(r) for r in raw]).to(s.device)
    q_feats, q_logits = penultimate_features(s.model, x)
    scores, idx = index.search(q_feats.float().cpu(), args.k)
    classes = s.known.classes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    rows, cols = len(args.images), args.k + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
    result = {"model": s.name, "data": s.data, "split": args.split, "indexed": len(pool), "queries": []}
    for q, path in enumerate(args.images):
        pred = classes[int(q_logits[q].argmax())] if q_logits is not None else None
        shown = tf(raw[q])  # what the model saw, un-normalised for display
        shown = (shown * tf._std + tf._mean).clamp(0, 1)
        _draw(axes[q][0], shown[0].numpy() if shown.shape[0] == 1 else shown.permute(1, 2, 0).numpy(),
              f"query {Path(path).name}" + (f"\npredicted {pred}" if pred is not None else ""))  # fmt: skip
        hits = []
        for j in range(args.k):
            i = int(idx[q, j])
            image, label = pool[i]
            hits.append({"index": i, "class": classes[label], "similarity": round(float(scores[q, j]), 5)})
            _draw(axes[q][j + 1], _shown(image), f"{classes[label]}  cos {scores[q, j]:.3f}")
        result["queries"].append({"image": path, "predicted": pred, "neighbours": hits})
    fig.suptitle(f"{s.name}: {args.k} nearest {args.split} images by penultimate-feature cosine", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "neighbours.png", dpi=120)
    plt.close(fig)
    (out / "neighbours.json").write_text(json.dumps(result, indent=1))
    for e in result["queries"]:
        agree = sum(h["class"] == e["predicted"] for h in e["neighbours"])
        print(f"{e['image']}: predicted {e['predicted']}; neighbours "
              + " ".join(f"{h['class']}({h['similarity']:.2f})" for h in e["neighbours"])
              + (f"; {agree}/{args.k} of the predicted class" if e["predicted"] is not None else ""))  # fmt: skip
    print(f"wrote {out / 'neighbours.png'} and {out / 'neighbours.json'}")
    return 0


# ----- open-set recognition -----------------------------------------------------------------------------------------


def run_open_set(args: argparse.Namespace) -> int:
    from vitlab.errors import ConfigError
    from vitlab.explain.openset import SCORES, auroc, fpr_at_tpr, open_set_scores, tpr_threshold

    s = _Setup(args, held_out=args.held_out)
    if s.held is None:
        raise ConfigError(
            f"--checkpoint {args.checkpoint} was trained on every class of {s.data}: open-set recognition needs "
            "classes unseen in training; train with --hold-out 8,9 (say) and run this on that run"
        )
    if not getattr(s.model, "num_classes", 0):
        raise ConfigError(f"{s.name} has no classifier (num_classes=0): the open-set scores are read from logits")
    if len(s.held.test) == 0 or len(s.known.test) == 0:
        raise ConfigError(f"--data {s.data}: the test split has no images of the known or of the held-out classes")
    known, unknown = s.features(s.known.test), s.features(s.held.test)
    top1 = float((known.logits.argmax(dim=-1) == known.labels).double().mean())
    sk, su = open_set_scores(known.logits), open_set_scores(unknown.logits)
    result = {
        "model": s.name,
        "data": s.data,
        "known_classes": s.known.classes,
        "held_out_classes": s.held.classes,
        "known_test_images": len(known.labels),
        "held_out_test_images": len(unknown.labels),
        "known_top1": round(top1, 5),
        "scores": {},
    }
    for name in SCORES:
        result["scores"][name] = {
            "auroc": round(auroc(sk[name], su[name]), 5),
            "fpr_at_95_tpr": round(fpr_at_tpr(sk[name], su[name]), 5),
            "threshold_at_95_tpr": round(tpr_threshold(sk[name]), 6),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    fig, axes = plt.subplots(1, len(SCORES), figsize=(4.2 * len(SCORES), 3.4))
    titles = {"max_logit": "max logit", "max_softmax": "max softmax", "energy": "energy (-E = logsumexp)"}
    for ax, name in zip(axes, SCORES, strict=True):
        a, b = sk[name].numpy(), su[name].numpy()
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 30
        ax.hist(a, bins=bins, alpha=0.6, density=True, label=f"known test ({len(a)})", color="tab:blue")
        ax.hist(b, bins=bins, alpha=0.6, density=True, label=f"held-out test ({len(b)})", color="tab:red")
        m = result["scores"][name]
        ax.axvline(m["threshold_at_95_tpr"], color="black", ls="--", lw=1, label="95% of known accepted")
        ax.set_title(f"{titles[name]}: AUROC {m['auroc']:.3f}, FPR@95 {m['fpr_at_95_tpr']:.3f}", fontsize=8)
        ax.set_xlabel("score (higher = known)", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(f"{s.name} on {s.data}: known {', '.join(s.known.classes)} vs held-out {', '.join(s.held.classes)}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out / "open_set.png", dpi=120)
    plt.close(fig)
    (out / "open_set.json").write_text(json.dumps(result, indent=1))
    print(f"{s.name} on {s.data}: {len(known.labels)} known test images (top-1 {top1:.4f}) vs "
          f"{len(unknown.labels)} of held-out class(es) {', '.join(s.held.classes)}")  # fmt: skip
    print(f"{'score':<12} {'AUROC':>7} {'FPR@95':>7}")
    for name, m in result["scores"].items():
        print(f"{name.replace('_', '-'):<12} {m['auroc']:>7.4f} {m['fpr_at_95_tpr']:>7.4f}")
    print(f"wrote {out / 'open_set.png'} and {out / 'open_set.json'}")
    return 0
