"""Image-text models: recall@1/5/10 in both directions, and zero-shot classification where the data has classes.

Retrieval runs over the test split's captions with duplicates merged (a generated set repeats captions; COCO has
five per image): image -> text is a hit when the image's own caption is among the K nearest distinct captions;
text -> image when one of the K nearest images carries that caption. Zero-shot (CLIP sec. 3.1.4): each class name
is put in every prompt template, the normalised text embeddings are averaged and normalised again, and an image
takes the class of the nearest one. Accuracy is split into the classes seen in training captions and the held-out
ones; chance is 1 / number of classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.data.batches import CaptionBatch
from vitlab.data.tokenizer import ClipTokenizer
from vitlab.engine.evaluators.base import Evaluator

KS = (1, 5, 10)


@torch.no_grad()
def zero_shot_weights(
    model: nn.Module, tokenizer: ClipTokenizer, classes: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """(K, E) unit-norm class embeddings: per class, the mean of its normalised template embeddings, re-normalised."""
    device = next(model.parameters()).device
    out = []
    for name in classes:
        ids = tokenizer([t.format(name) for t in templates]).to(device)  # (n_templates, context)
        z = model.encode_text(ids[:, : int(ids.ne(0).sum(1).max())]).float()  # trailing padding dropped
        out.append(F.normalize(z.mean(0), dim=-1))
    return torch.stack(out)


def recall_from_hits(hits: torch.Tensor, ks: Sequence[int] = KS) -> dict[int, float]:
    """Recall@K from hits (Q, K') bool: hits[q, j] says whether query q's (j+1)-th result is relevant, results best
    first; a query counts at K when any of its first K results is (K' < K: all K' of them)."""
    return {k: hits[:, :k].any(1).float().mean().item() for k in ks}


def retrieval_recall(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, caption_ids: Sequence[int], ks: Sequence[int] = KS
) -> dict[str, float]:
    """Recall@K both ways. image_embeds (N, E), text_embeds (M, E) for M distinct captions, caption_ids (N,): the
    index of each image's caption among them."""
    cap = torch.as_tensor(list(caption_ids), dtype=torch.long)
    N, M = len(image_embeds), len(text_embeds)
    i2t = image_embeds @ text_embeds.t()  # (N, M)
    top_texts = i2t.topk(min(max(ks), M), dim=1).indices  # (N, k)
    top_images = i2t.t().topk(min(max(ks), N), dim=1).indices  # (M, k) image indices
    i2t_r = recall_from_hits(top_texts == cap[:, None], ks)
    t2i_r = recall_from_hits(cap[top_images] == torch.arange(M)[:, None], ks)
    return {f"{d}_r{k}": r[k] for k in ks for d, r in (("i2t", i2t_r), ("t2i", t2i_r))}


@dataclass
class ClipResult:
    recall: dict[str, float]
    count: int
    classes: list[str]
    held_out: list[str]
    per_class: list[float]  # zero-shot accuracy per class (nan without samples); empty without classes
    zero_shot: dict[str, float]  # "all", "seen", "held_out", "chance" (empty without classes)

    @property
    def r_mean(self) -> float:
        return sum(self.recall.values()) / len(self.recall)

    @property
    def metrics(self) -> dict[str, float]:
        m = {"r_mean": self.r_mean, **self.recall}
        m.update({f"zs_{k}": v for k, v in self.zero_shot.items() if k != "chance"})
        return m

    def details(self) -> dict:
        return {**self.metrics, "zero_shot": self.zero_shot, "classes": self.classes, "held_out": self.held_out,
                "per_class_zero_shot": self.per_class}  # fmt: skip


class ClipEvaluator(Evaluator):
    primary = "r_mean"
    metric_labels = {
        "r_mean": "mean recall@1/5/10 (both ways)",
        **{f"i2t_r{k}": f"image->text R@{k}" for k in KS},
        **{f"t2i_r{k}": f"text->image R@{k}" for k in KS},
        "zs_all": "zero-shot accuracy",
        "zs_seen": "zero-shot accuracy, seen combinations",
        "zs_held_out": "zero-shot accuracy, held-out combinations",
    }

    def __init__(
        self, tokenizer: ClipTokenizer | None, classes: Sequence[str] = (), held_out: Sequence[str] = (),
        templates: Sequence[str] = ("{}",), tokenizer_for: Callable[[nn.Module], ClipTokenizer] | None = None,
    ) -> None:  # fmt: skip
        """tokenizer_for: the tokenizer chosen by the model at the first batch, when `tokenizer` is None (a checkpoint
        whose text tower, CLIP's or a BERT, decides the vocabulary)."""
        if (tokenizer is None) == (tokenizer_for is None):
            raise ValueError("give a tokenizer or tokenizer_for, not both")
        self.tokenizer, self.tokenizer_for = tokenizer, tokenizer_for
        self.classes, self.templates = list(classes), list(templates)
        self.held_out = [c for c in held_out if c in self.classes]
        self.reset()

    def reset(self) -> None:
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.captions: dict[tuple, int] = {}  # token row -> distinct caption index
        self.caption_of: list[int] = []
        self.texts: list[torch.Tensor] = []
        self.weights: torch.Tensor | None = None

    def must_be_finite(self) -> set[str]:
        return {"r_mean", *(f"{d}_r{k}" for d in ("i2t", "t2i") for k in KS)}

    def update(self, model: nn.Module, batch: CaptionBatch) -> None:
        if self.tokenizer is None:
            self.tokenizer = self.tokenizer_for(model)
        if self.classes and self.weights is None:
            self.weights = zero_shot_weights(model, self.tokenizer, self.classes, self.templates).cpu()
        self.images.append(model.encode_image(batch.images).float().cpu())
        new = []
        for b, row in enumerate(batch.input_ids.cpu().tolist()):
            key = tuple(t for t in row if t != 0)
            if key not in self.captions:
                self.captions[key] = len(self.captions)
                new.append(b)
            self.caption_of.append(self.captions[key])
        if new:
            self.texts.append(model.encode_text(batch.input_ids[new]).float().cpu())
        if batch.labels is not None:
            self.labels.append(batch.labels.cpu())

    def compute(self) -> ClipResult:
        if not self.images:
            raise ValueError("evaluation set is empty")
        images = torch.cat(self.images)
        recall = retrieval_recall(images, torch.cat(self.texts), self.caption_of)
        per_class, zero_shot = [], {}
        if self.weights is not None and self.labels:
            labels = torch.cat(self.labels)
            pred = (images @ self.weights.t()).argmax(1)
            K = len(self.classes)
            right = torch.bincount(labels[labels >= 0], weights=(pred == labels)[labels >= 0].float(), minlength=K)
            support = torch.bincount(labels[labels >= 0], minlength=K)
            per_class = [r / s if s else float("nan") for r, s in zip(right.tolist(), support.tolist(), strict=True)]
            held = torch.tensor([c in self.held_out for c in self.classes])
            groups = {"all": torch.ones(K, dtype=torch.bool), "seen": ~held, "held_out": held}
            for name, keep in groups.items():
                if support[keep].sum() > 0:
                    zero_shot[name] = (right[keep].sum() / support[keep].sum()).item()
            zero_shot["chance"] = 1 / K
        return ClipResult(recall, len(images), self.classes, self.held_out, per_class, zero_shot)

    def batch_stats(self, outputs: dict[str, torch.Tensor], batch: CaptionBatch) -> dict[str, float]:
        """In-batch matching accuracy (an image's nearest caption is its own, or one with the same words), and the
        logit scale exp(t) the step used."""
        pred = outputs["logits_per_image"].argmax(-1)  # (B,)
        same = (batch.input_ids[pred] == batch.input_ids).all(-1)
        return {"match": same.sum().item(), "logit_scale": outputs["logit_scale"].item() * len(batch)}
