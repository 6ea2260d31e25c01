"""Contrastive image-text training (CLIP, SigLIP, LiT): CaptionBatch, InfoNCE or sigmoid loss, recall@K, zero-shot.

Data: `--data captions` (the embedded generated set, `vitlab.data.captions`: colour-shape combinations held out of
training, so zero-shot on unseen combinations is measured) or `--data captions:FILE` (CSV or JSONL of image path and
caption; the test split is --test-fraction of it). Text is tokenised with CLIP's BPE (`--tokenizer` for another
vocabulary: CLIP's .txt.gz or a directory with vocab.json + merges.txt).
Images are not augmented: a flip or crop would contradict the captions' "left" / "top".

LiT with a pretrained text tower (`--text-tower minilm --lock text`): the model's text tower becomes a BERT encoder of
that directory's sizes (`text_tower="bert"`), its weights are loaded from there (all-MiniLM-L6-v2, which `make install`
puts in the venv, or any transformers BERT directory), the text is tokenised with its WordPiece vocabulary, and the
new text projection, the image tower and the temperature train while the encoder stays fixed.
"""

from __future__ import annotations

import dataclasses
import logging
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
from vitlab.data.wordpiece import WordPieceTokenizer
from vitlab.engine.evaluators.clip import KS, ClipEvaluator, ClipResult
from vitlab.engine.report import Section, new_figure, table
from vitlab.engine.tasks.base import Task, TaskConfig
from vitlab.errors import CheckpointError, ConfigError, DataError
from vitlab.methods.clip import LOSSES, ImageTextContrastive
from vitlab.models.clip import bert_config
from vitlab.weights.bert import find_bert_dir, read_bert_config, read_bert_dir

log = logging.getLogger(__name__)

LOCKS = ("none", "image", "text")


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ClipTaskConfig(TaskConfig):
    loss: str = _f("infonce", "infonce (CLIP's symmetric cross-entropy) or siglip (pairwise sigmoid, learned bias)")
    lock: str = _f(
        "none",
        "LiT: keep this tower's weights fixed (image | text; give it with --pretrained, or "
        "the text one with --text-tower)",
    )
    tokenizer: str | None = _f(None, "BPE vocabulary: CLIP's .txt.gz or a vocab.json + merges.txt directory "
                                     "(default: the copy `make install` put in the venv); with --text-tower a "
                                     "WordPiece tokenizer.json / vocab.txt (default: the tower's)")  # fmt: skip
    text_tower: str | None = _f(None, "LiT's pretrained text tower: 'minilm' (all-MiniLM-L6-v2, put in the venv by "
                                      "`make install`) or a transformers BERT directory; its weights and WordPiece "
                                      "vocabulary are used (default: CLIP's own text tower)")  # fmt: skip
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

    def __init__(self, base: CaptionSet, transform: ImageTransform, tokenizer: ClipTokenizer | WordPieceTokenizer):
        self.base, self.transform, self.tokenizer = base, transform, tokenizer

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, caption, label = self.base[i]
        return self.transform(img), self.tokenizer.encode(caption), label


def text_tokenizer(
    tcfg: ClipTaskConfig, model: nn.Module | None = None, path: str | None = None
) -> ClipTokenizer | WordPieceTokenizer:
    """The tokenizer of the text tower: a BERT tower's WordPiece (`path`, --tokenizer, else the --text-tower
    directory's, else the installed MiniLM's), CLIP's BPE otherwise (`path`, --tokenizer, else the installed one).
    `model` decides which where given (a checkpoint whose run config is not at hand), else --text-tower does."""
    path = path or tcfg.tokenizer
    cfg = getattr(model, "cfg", None)
    bert = getattr(cfg, "text_tower", "clip") == "bert" if model is not None else tcfg.text_tower is not None
    if not bert:
        return ClipTokenizer.from_pretrained(path, **({"context_length": cfg.context_length} if cfg else {}))
    context = cfg.context_length if cfg else read_bert_config(find_bert_dir(tcfg.text_tower))["max_positions"]
    return WordPieceTokenizer.from_pretrained(path or find_bert_dir(tcfg.text_tower or "minilm"), context)


def _model_tokenizer(tcfg: ClipTaskConfig, model: nn.Module) -> ClipTokenizer | WordPieceTokenizer:
    return text_tokenizer(tcfg, getattr(model, "module", model))


def load_text_tower(model: nn.Module, path) -> None:
    """The BERT directory's weights into the model's text encoder; sizes the model was not built with are an error."""
    if getattr(model.cfg, "text_tower", "clip") != "bert":
        raise ConfigError(
            f"--text-tower {path}: {getattr(model, 'model_name', 'the model')} has CLIP's text tower, not a BERT"
        )
    fields, state = read_bert_dir(path, pooler=False)
    own = dataclasses.asdict(bert_config(model.cfg))
    differ = [f"{k} {fields[k]} (model: {own[k]})" for k in fields if fields[k] != own[k]]
    if differ:
        raise ConfigError(f"{path / 'config.json'}: the BERT's sizes do not fit the text tower: {'; '.join(differ)}")
    encoder = model.text.encoder
    try:
        encoder.load_state_dict(state)  # strict: every weight of the encoder, no other
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit a BERT encoder of its config.json ({e})") from None
    log.info("text tower: %s (%s parameters)", path, f"{sum(p.numel() for p in encoder.parameters()):,}")


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
        if tcfg.text_tower is not None:
            load_text_tower(model, find_bert_dir(tcfg.text_tower))
        if tcfg.lock != "none":
            for p in model.towers[tcfg.lock].parameters():
                p.requires_grad_(False)

    def model_kwargs(self, splits: DataSplits, tcfg: ClipTaskConfig) -> dict:
        # SigLIP's initialisation (Zhai et al. sec. 3): t = log 10, b = -10, so the many negatives start near 0
        kw = dict(logit_scale_init=math.log(10), logit_bias_init=-10.0) if tcfg.loss == "siglip" else {}
        if tcfg.text_tower is not None:  # the text sizes of the BERT directory (its weights load in prepare_model)
            b = read_bert_config(find_bert_dir(tcfg.text_tower))
            kw.update(
                text_tower="bert", vocab_size=b["vocab_size"], text_width=b["width"], text_depth=b["depth"],
                text_heads=b["num_heads"], text_mlp_dim=b["mlp_dim"], context_length=b["max_positions"],
            )  # fmt: skip
        return kw

    def datasets(self, splits: DataSplits, model: nn.Module, augment: bool, tcfg: ClipTaskConfig):
        tok = text_tokenizer(tcfg, model)
        if tok.vocab_size > model.cfg.vocab_size:
            raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens but the model's text tower embeds "
                              f"{model.cfg.vocab_size}")  # fmt: skip
        tf = ImageTransform.for_model(model)
        return TokenisedCaptions(splits.train, tf, tok), TokenisedCaptions(splits.test, tf, tok)

    def build_method(self, tcfg: ClipTaskConfig, splits: DataSplits, device: torch.device) -> ImageTextContrastive:
        return ImageTextContrastive(tcfg.loss)

    def build_evaluator(self, splits: DataSplits, tcfg: ClipTaskConfig) -> ClipEvaluator:
        test = splits.test
        # the tokenizer follows the model's text tower (a LiT checkpoint file evaluated without its run's config)
        return ClipEvaluator(None, test.classes, test.held_out, test.templates, partial(_model_tokenizer, tcfg))

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
