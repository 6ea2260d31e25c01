"""`vitlab zeroshot --checkpoint RUN --labels "cat,dog" IMAGE...`: classify images by labels typed at test time.

Each label is put into every prompt template; the class embedding is the re-normalised mean of the normalised
prompt embeddings (CLIP sec. 3.1.4), and an image's probabilities are the softmax of its scaled cosine similarities.
`--data SPEC` scores zero-shot accuracy on a labelled data set instead (its class names are the labels), e.g.
`--data captions` (the generated caption set: seen vs held-out combinations) or `--data PATH` (an ImageFolder).
"""

from __future__ import annotations

import argparse


def add_parser(sub, argv: list[str]) -> None:
    from vitlab.cli.common import add_checkpoint_args

    p = sub.add_parser("zeroshot", help="zero-shot classification with an image-text model (labels typed at test time)")
    p.add_argument("images", nargs="*", help="image files (png, jpg, ...)")
    add_checkpoint_args(p)
    p.add_argument("--labels", default=None, help="comma-separated class names, e.g. 'cat,dog,car'")
    p.add_argument("--labels-file", default=None, help="class names, one per line (instead of --labels)")
    p.add_argument(
        "--templates", default=None,
        help="prompt templates: a file of lines with {} where the label goes, 'imagenet' (the CLIP paper's 80), or "
        "one template such as 'a photo of a {}.' (default: the data's own, else the bare label)",
    )  # fmt: skip
    p.add_argument("--data", default=None, help="score zero-shot accuracy on this labelled data set's test split")
    p.add_argument("--test-fraction", type=float, default=0.2, help="test share of a data set without a split")
    p.add_argument(
        "--few-shot", default=None, metavar="K,K,...",
        help="with --data: also fit logistic-regression probes on K labelled images per class of frozen image "
        "features (e.g. 1,2,4,8,16) and compare them with zero-shot, as CLIP's Fig. 6",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="--few-shot: draws of the K shots per K (mean and std)")
    p.add_argument("--plot", default=None, help="--few-shot: write the accuracy-vs-shots plot to this PNG")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="vocabulary (default: the run's, else CLIP's installed BPE or, for a BERT text tower, MiniLM's WordPiece)",
    )
    p.add_argument("--topk", type=int, default=3, help="labels printed per image, best first")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(run=run)


def read_labels(args) -> list[str] | None:
    from pathlib import Path

    from vitlab.errors import ConfigError, DataError

    if args.labels is not None and args.labels_file is not None:
        raise ConfigError("give --labels or --labels-file, not both")
    if args.labels_file is not None:
        try:
            text = Path(args.labels_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"--labels-file {args.labels_file}: cannot read it ({e})") from None
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    elif args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    else:
        return None
    if len(labels) < 2:
        raise ConfigError(f"zero-shot needs at least 2 labels, got {len(labels)}: {', '.join(labels) or 'none'}")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"label(s) given twice: {', '.join(dupes)}")
    return labels


def read_templates(spec: str | None) -> list[str] | None:
    """None (not given), 'imagenet', a file of templates, or one template string."""
    from pathlib import Path

    from vitlab.data.prompts import IMAGENET_TEMPLATES
    from vitlab.errors import ConfigError, DataError

    if spec is None:
        return None
    if spec == "imagenet":
        return list(IMAGENET_TEMPLATES)
    path = Path(spec)
    if path.is_file():
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as e:
            raise DataError(f"--templates {spec}: not UTF-8 text ({e.reason})") from None
        where = lambda n: f"--templates {spec}, line {n}"  # noqa: E731
    elif "{}" in spec:
        lines, where = [spec], lambda n: f"--templates {spec!r}"  # noqa: E731
    else:
        raise ConfigError(f"--templates {spec!r} is not a file, 'imagenet', or a template with {{}} for the label")
    if not lines:
        raise DataError(f"--templates {spec}: the file holds no template")
    for n, t in enumerate(lines, start=1):
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise ConfigError(f"{where(n)}: {t!r} needs exactly one {{}} where the label goes, and no other braces")
    return lines


def run(args: argparse.Namespace) -> int:
    import json

    from vitlab.cli.common import load_model, run_task_config
    from vitlab.cli.text import printable
    from vitlab.data import ImageTransform
    from vitlab.data.datasets import check_image
    from vitlab.engine.tasks import get_task
    from vitlab.engine.tasks.clip import text_tokenizer
    from vitlab.engine.trainer import resolve_device
    from vitlab.errors import ConfigError

    for flag, v in (("--topk", args.topk), ("--batch-size", args.batch_size), ("--repeats", args.repeats)):
        if v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    if (args.few_shot or args.plot) and args.data is None:
        raise ConfigError("--few-shot and --plot score a labelled data set: give --data SPEC")
    if args.plot and not args.few_shot:
        raise ConfigError("--plot draws the --few-shot curve: give --few-shot K,K,...")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise ConfigError(f"--plot writes a PNG; name it *.png, got {args.plot!r}")
    labels, templates = read_labels(args), read_templates(args.templates)
    if args.data is None and not args.images:
        raise ConfigError("give image files to classify, or --data SPEC to score zero-shot accuracy on a data set")
    if args.data is None and labels is None:
        raise ConfigError("give the class names: --labels 'cat,dog,...' or --labels-file FILE")
    for path in args.images:
        check_image(path)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, args.model).to(device).eval()
    if not hasattr(model, "encode_text"):
        raise ConfigError(f"--checkpoint {args.checkpoint} holds a {model.model_name}, not an image-text model")
    tcfg = run_task_config(args.checkpoint, get_task("clip"))  # the run's tokenizer and caption-set sizes
    tokenizer = text_tokenizer(tcfg, model, args.tokenizer)  # CLIP's BPE, or a BERT text tower's WordPiece
    tf = ImageTransform.for_model(model)
    out: dict = {}
    if args.data is not None:
        out["data"] = score_data(args, model, tokenizer, tf, labels, templates, device, tcfg)
    if args.images:
        out["images"] = classify_images(args, model, tokenizer, tf, labels or out["data"]["classes"], templates,
                                        device)  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if "data" in out:
        d = out["data"]
        print(
            printable(
                f"zero-shot on {args.data} ({d['count']} test images, {len(d['classes'])} classes, "
                f"{d['templates']} template(s)): accuracy {d['accuracy']:.4f}  chance {d['chance']:.4f}"
            )
        )
        if "seen" in d:
            print(f"  seen combinations {d['seen']:.4f}  held-out combinations {d['held_out']:.4f}")
        if "few_shot" in d:
            fs = d["few_shot"]
            print(f"  linear probe on frozen image features (mean +- std of {fs['repeats']} draws, C cross-validated):")
            for k, m, sd, c in zip(fs["shots"], fs["accuracy"], fs["std"], fs["C"], strict=True):
                print(f"    {k:3d} shot(s) per class: {m:.4f} +- {sd:.4f}  (C {c:g})")
        if args.plot:
            print(f"  plot: {args.plot}")
    for r in out.get("images", []):
        best = "  ".join(f"{printable(p['label'])} {p['prob']:.3f}" for p in r["top"])
        print(f"{printable(r['image'])}: {best}")
    return 0


def _encode_images(model, images, device, batch_size: int):
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model.encode_image(torch.stack(images[i : i + batch_size]).to(device)).float())
    return torch.cat(out)


def classify_images(args, model, tokenizer, tf, labels, templates, device) -> list[dict]:
    from vitlab.data import read_image
    from vitlab.engine.evaluators.clip import zero_shot_weights

    weights = zero_shot_weights(model, tokenizer, labels, templates or ["{}"])
    z = _encode_images(model, [tf(read_image(p)) for p in args.images], device, args.batch_size)
    logits = model.scale().float() * z @ weights.t()
    if hasattr(model, "logit_bias"):
        logits = logits + model.logit_bias.float()
    probs = logits.softmax(-1).cpu()
    k = min(args.topk, len(labels))
    results = []
    for path, p in zip(args.images, probs, strict=True):
        top = p.topk(k)
        pairs = zip(top.values.tolist(), top.indices.tolist(), strict=True)
        results.append({"image": path, "top": [{"label": labels[i], "prob": v} for v, i in pairs]})
    return results


def score_data(args, model, tokenizer, tf, labels, templates, device, tcfg) -> dict:
    """Zero-shot accuracy on --data's test split (a caption set's classes, or a labelled image set's), and with
    --few-shot the linear probes on K labelled images per class (the generated set: a fresh balanced pool)."""
    from pathlib import Path

    import torch

    from vitlab.engine.evaluators.clip import zero_shot_weights
    from vitlab.engine.evaluators.fewshot import few_shot_probe, parse_shots, plot_few_shot
    from vitlab.errors import ConfigError

    shots = parse_shots(args.few_shot) if args.few_shot else None
    if args.data == "captions" or args.data.startswith("captions:"):
        from vitlab.data.captions import generated_captions
        from vitlab.engine.tasks import get_task

        task = get_task("clip")
        test = task.load_data(args.data, args.test_fraction, tcfg).test
        if not test.classes:
            raise ConfigError(f"--data {args.data}: a caption file has no classes to score; use --data with labels")
        classes, held = list(test.classes), list(test.held_out)
        samples = [(img, label) for img, _, label in (test[i] for i in range(len(test)))]
        default_templates = list(test.templates)
        if shots:  # labelled shots of every combination, held-out ones included, drawn apart from train and test
            pool = generated_captions(len(classes) * max(shots) * 4, seed=2, train=False)
            pool_samples = [(img, label) for img, _, label in (pool[i] for i in range(len(pool)))]
    else:
        from vitlab.data import load_data

        splits = load_data(args.data, args.test_fraction)
        classes, held = list(splits.classes), []
        samples = [splits.test[i] for i in range(len(splits.test))]
        default_templates = ["{}"]
        if shots:
            pool_samples = [splits.train[i] for i in range(len(splits.train))]
    if labels is not None:
        if len(labels) != len(classes):
            raise ConfigError(f"--data {args.data} has {len(classes)} classes but {len(labels)} labels were given")
        names = labels  # the words to prompt with, in the data's class order
    else:
        names = classes
    templates = templates or default_templates
    weights = zero_shot_weights(model, tokenizer, names, templates)
    z = _encode_images(model, [tf(img) for img, _ in samples], device, args.batch_size)
    y = torch.tensor([label for _, label in samples])
    right = ((z @ weights.t()).argmax(-1).cpu() == y).float()
    out = {"classes": names, "templates": len(templates), "count": len(y), "accuracy": right.mean().item(),
           "chance": 1 / len(names)}  # fmt: skip
    if held:
        is_held = torch.tensor([classes[i] in held for i in y.tolist()])
        out.update(seen=right[~is_held].mean().item(), held_out=right[is_held].mean().item(), held_out_classes=held)
    if shots:
        pz = _encode_images(model, [tf(img) for img, _ in pool_samples], device, args.batch_size)
        py = torch.tensor([label for _, label in pool_samples])
        try:
            fs = few_shot_probe(pz.cpu(), py, z.cpu(), y, shots, repeats=args.repeats)
        except ValueError as e:
            raise ConfigError(f"--few-shot on --data {args.data}: {e}") from None
        out["few_shot"] = fs.as_dict()
        if args.plot:
            title = f"{Path(args.checkpoint).name} on {args.data}: zero-shot vs linear probe"
            plot_few_shot(fs, out["accuracy"], out["chance"], title, Path(args.plot))
    return out
