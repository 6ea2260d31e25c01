"""Contrastive image-text training (CLIP, SigLIP, LiT): CaptionBatch, InfoNCE or sigmoid loss, recall@K, zero-shot.

Data: `--data captions` (the embedded generated set, `vitlab.data.captions`: colour-shape combinations held out of
training, so zero-shot on unseen combinations is measured) or `--data captions:FILE` (CSV or JSONL of image path and
caption; the test split is --test-fraction of it). Text is tokenised with CLIP's BPE (`--tokenizer` for another
vocabulary: CLIP's .txt.gz or a directory with vocab.json + merges.txt).
Images are not augmented: a flip or crop would contradict the captions' "left" / "top".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from vitlab.data import DataSplits, ImageTransform
from vitlab.data.batches import collate_captions
from vitlab.data.captions import CaptionSet, generated_captions, read_caption_file
from vitlab.data.tokenizer import ClipTokenizer
from vitlab.engine.evaluators.clip import KS, ClipEvaluator, ClipResult
from vitlab.engine.report import Section, new_figure, table
from vitlab.engine.tasks.base import Task, TaskConfig
from vitlab.errors import ConfigError, DataError
from vitlab.methods.clip import LOSSES, ImageTextContrastive

LOCKS = ("none", "image", "text")


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ClipTaskConfig(TaskConfig):
    loss: str = _f("infonce", "infonce (CLIP's symmetric cross-entropy) or siglip (pairwise sigmoid, learned bias)")
    lock: str = _f("none", "LiT: keep this tower's weights fixed (image | text; give it with --pretrained)")
    tokenizer: str | None = _f(None, "BPE vocabulary: CLIP's .txt.gz or a vocab.json + merges.txt directory "
                                     "(default: the copy `make install` put in the venv)")  # fmt: skip
    captions_train: int = _f(4000, "images in the generated caption set's training split (--data captions)")
    captions_val: int = _f(800, "images in its validation split (every colour-shape combination equally)")

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.lock not in LOCKS:
            raise ConfigError(f"--lock must be one of {', '.join(LOCKS)}, got {self.lock!r}")
        for flag, v in (("--captions-train", self.captions_train), ("--captions-val", self.captions_val)):
            if v < 2:
                raise ConfigError(f"{flag} must be >= 2, got {v}")


class TokenisedCaptions(Dataset):
    """(uint8 image, caption, class) -> (model input, token ids, class): the image transformed, the caption encoded."""

    def __init__(self, base: CaptionSet, transform: ImageTransform, tokenizer: ClipTokenizer) -> None:
        self.base, self.transform, self.tokenizer = base, transform, tokenizer

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, caption, label = self.base[i]
        return self.transform(img), self.tokenizer.encode(caption), label


def split_captions(data: CaptionSet, test_fraction: float, seed: int = 0) -> tuple[CaptionSet, CaptionSet]:
    if not 0 < test_fraction < 1:
        raise ConfigError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    n_test = max(1, round(len(data) * test_fraction))
    if len(data) - n_test < 2:
        raise DataError(f"{data.source}: {len(data)} captioned images are too few to split into train and test")
    order = np.random.default_rng(seed).permutation(len(data))
    return data.subset(order[n_test:]), data.subset(order[:n_test])


class ClipTask(Task):
    name = "clip"
    help = "image-text contrastive (CLIP / SigLIP / LiT): recall@1/5/10 both ways, zero-shot seen vs held-out"
    config_cls = ClipTaskConfig
    default_data = "captions"
    default_model = "clip_vit_tiny_patch8_32"
    model_kind = "clip"
    # CLIP's AdamW recipe (sec. 2.5: wd 0.2, warm-up, cosine) at a CPU-sized batch and lr
    run_defaults = {"lr": 5e-4, "min_lr": 1e-6, "weight_decay": 0.2, "batch_size": 64, "epochs": 15,
                    "warmup_epochs": 1.0, "clip_grad": 1.0}  # fmt: skip

    def tokenizer(self, tcfg: ClipTaskConfig) -> ClipTokenizer:
        return ClipTokenizer.from_pretrained(tcfg.tokenizer)

    @property
    def collate(self):
        return partial(collate_captions, pad_id=0)

    def load_data(self, spec: str, test_fraction: float, tcfg: ClipTaskConfig) -> DataSplits:
        if spec == "captions":
            train = generated_captions(tcfg.captions_train, seed=0, train=True)
            test = generated_captions(tcfg.captions_val, seed=1, train=False)
        else:
            kind, _, path = spec.partition(":")
            if kind != "captions" or not path:
                raise DataError(f"--task clip reads --data captions or captions:FILE (CSV / JSONL), got {spec!r}")
            train, test = split_captions(read_caption_file(path), test_fraction)
        return DataSplits(train, test, list(test.classes), natural_images=False)

    def check_model(self, model: nn.Module, splits: DataSplits, where: str) -> None:
        if not hasattr(model, "encode_text"):
            raise ConfigError(f"{getattr(model, 'model_name', type(model).__name__)} is not an image-text model")

    def prepare_model(self, model: nn.Module, tcfg: ClipTaskConfig) -> None:
        if tcfg.lock != "none":
            for p in model.towers[tcfg.lock].parameters():
                p.requires_grad_(False)

    def model_kwargs(self, splits: DataSplits, tcfg: ClipTaskConfig) -> dict:
        # SigLIP's initialisation (Zhai et al. sec. 3): t = log 10, b = -10, so the many negatives start near 0
        return dict(logit_scale_init=math.log(10), logit_bias_init=-10.0) if tcfg.loss == "siglip" else {}

    def datasets(self, splits: DataSplits, model: nn.Module, augment: bool, tcfg: ClipTaskConfig):
        tok = self.tokenizer(tcfg)
        if tok.vocab_size > model.cfg.vocab_size:
            raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens but the model's text tower embeds "
                              f"{model.cfg.vocab_size}")  # fmt: skip
        tf = ImageTransform.for_model(model)
        return TokenisedCaptions(splits.train, tf, tok), TokenisedCaptions(splits.test, tf, tok)

    def build_method(self, tcfg: ClipTaskConfig, splits: DataSplits, device: torch.device) -> ImageTextContrastive:
        return ImageTextContrastive(tcfg.loss)

    def build_evaluator(self, splits: DataSplits, tcfg: ClipTaskConfig) -> ClipEvaluator:
        test = splits.test
        return ClipEvaluator(self.tokenizer(tcfg), test.classes, test.held_out, test.templates)

    def report_sections(self, result: ClipResult, splits: DataSplits) -> list[Section]:
        fig = new_figure(6.5, 3.2)
        ax = fig.subplots()
        x = np.arange(len(KS))
        for off, d, label in ((-0.2, "i2t", "image -> text"), (0.2, "t2i", "text -> image")):
            ax.bar(x + off, [result.recall[f"{d}_r{k}"] for k in KS], 0.4, label=label)
        ax.set_xticks(x, [f"R@{k}" for k in KS])
        ax.set(ylim=(0, 1.02), ylabel="recall", title=f"retrieval over {result.count} test images")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        rows = [(k, f"{v:.4f}") for k, v in result.recall.items()]
        sections = [Section("Retrieval (recall@K, duplicate captions merged)", table(("metric", "value"), rows),
                            {"recall.png": fig})]  # fmt: skip
        if result.zero_shot:
            zs = result.zero_shot
            fig = new_figure(5.0, 3.2)
            ax = fig.subplots()
            names = [n for n in ("seen", "held_out", "chance") if n in zs]
            ax.bar(names, [zs[n] for n in names], color=["tab:blue", "tab:orange", "tab:grey"][: len(names)])
            ax.set(ylim=(0, 1.02), ylabel="accuracy", title=f"zero-shot over {len(result.classes)} classes")
            ax.grid(alpha=0.3, axis="y")
            lines = table(("combinations", "zero-shot accuracy"), [(n, f"{zs[n]:.4f}") for n in names])
            lines += ["", f"held out of training: {', '.join(result.held_out) or 'none'}"]
            sections.append(Section("Zero-shot classification", lines, {"zero_shot.png": fig}))
        return sections

    def summary_lines(self, result: ClipResult, evaluator, splits: DataSplits) -> list[str]:
        lines = ["  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())]
        if result.zero_shot:
            zs = result.zero_shot
            lines.append(
                f"zero-shot over {len(result.classes)} classes: seen {zs.get('seen', float('nan')):.4f}  held-out "
                f"{zs.get('held_out', float('nan')):.4f}  chance {zs['chance']:.4f}"
            )
        return lines
