"""DINO self-distillation (Caron et al., arXiv 2104.14294): a student and its EMA teacher, each an encoder + DINO head.

Data flow of one step (Algorithm 1): the 2 global crops go through the teacher (no gradient), all crops through the
student; `losses.dino.dino_loss` compares every teacher view with every other student view; the center moves
towards the teacher's batch mean. After each optimizer step the teacher follows the student with the cosine momentum
0.996 -> 1. During the first `freeze_last_layer` epochs the head's last layer gets no update (its gradient is dropped
before the optimizer step, as the official `cancel_gradients_last_layer`), which the paper found stabilises training.

The encoder is used through its public API only: `forward_features` then `forward_head(..., pre_logits=True)` (the
class token of a ViT, the pooled map of a CNN), so any registered model serves. Crops of one size are batched
together through the encoder (the official MultiCropWrapper), so a ViT must accept the local crops' size
(`dynamic_img_size`); the task builds it so.

Differences from the reference code: the weight-normalised last layer is written out (W = g * v / ||v||, one g per
prototype, fixed to 1 unless `norm_last_layer=False`), not `nn.utils.weight_norm`; weight decay stays constant (the
engine's), where the official recipe raises it 0.04 -> 0.4 on a cosine.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.data.multicrop import MultiCropBatch
from vitlab.losses.dino import cosine_momentum, dino_loss, ema_update_, teacher_temperature, update_center
from vitlab.methods.base import Method, StepOutput


class DinoHead(nn.Module):
    """3-layer MLP (GELU) -> bottleneck -> L2 normalisation -> weight-normalised linear to K prototypes (no bias).

    Shapes: (B, D) -> (B, K). DINO's defaults: hidden 2048, bottleneck 256, K = 65536.
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, norm_last_layer: bool = True
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )  # fmt: skip
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        v = torch.empty(out_dim, bottleneck_dim)
        nn.init.kaiming_uniform_(v, a=5**0.5)  # nn.Linear's own initialisation of the direction
        self.last_v = nn.Parameter(v)  # directions of the prototypes
        # g = 1 per prototype: fixed (norm_last_layer, the default) or learned
        self.last_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)

    def last_layer(self) -> list[nn.Parameter]:
        return [self.last_v, self.last_g]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)  # (B, bottleneck)
        w = self.last_g * F.normalize(self.last_v, dim=-1)  # (K, bottleneck)
        return x @ w.t()  # (B, K)


class DinoNet(nn.Module):
    """encoder + DINO head over a list of views; views of equal size share one encoder pass."""

    def __init__(self, backbone: nn.Module, head: DinoHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D): the encoder's pooled features (class token of a ViT)."""
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        i = 0
        while i < len(views):
            j = i
            while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
                j += 1
            feats = self.embed(torch.cat(views[i:j]))  # (n_views * B, D)
            out.extend(self.head(feats).chunk(j - i))  # each (B, K)
            i = j
        return out


@dataclass(frozen=True)
class DinoConfig:
    encoder: str  # the registered encoder's name
    encoder_config: dict = field(default_factory=dict)  # its config fields
    out_dim: int = 65536  # prototypes K
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True


class DinoModel(nn.Module):
    """Student and teacher networks with the center: everything a DINO run trains, saves and resumes.

    `teacher_net.backbone` is the encoder to use afterwards (the paper evaluates and draws the teacher).
    """

    model_name = "dino"

    def __init__(self, encoder: nn.Module, out_dim: int, hidden_dim: int, bottleneck_dim: int, norm_last_layer=True):
        super().__init__()
        D = encoder.head_hidden_size if hasattr(encoder, "head_hidden_size") else encoder.num_features
        name = getattr(encoder, "model_name", type(encoder).__name__)
        self.cfg = DinoConfig(name, asdict(encoder.cfg), out_dim, hidden_dim, bottleneck_dim, norm_last_layer)
        self.student_net = DinoNet(encoder, DinoHead(D, out_dim, hidden_dim, bottleneck_dim, norm_last_layer))
        self.teacher_net = copy.deepcopy(self.student_net).requires_grad_(False)  # starts equal (Algorithm 1)
        self.register_buffer("center", torch.zeros(1, out_dim))

    @property
    def encoder(self) -> nn.Module:
        return self.teacher_net.backbone

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.student_net.backbone.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.student_net.backbone, "no_weight_decay", lambda: set())()
        return {f"student_net.backbone.{n}" for n in inner}

    def train(self, mode: bool = True) -> DinoModel:
        super().train(mode)
        self.teacher_net.eval()  # the teacher never drops paths or units (as the official code: no dropout there)
        return self


@dataclass
class DinoSchedule:
    """Where the schedules stand: set by the engine's start_epoch, advanced by each optimizer step."""

    epoch: int = 1
    epochs: int = 1
    step: int = 0  # global optimizer step
    total_steps: int = 1


class Dino(Method):
    """Loss `dino` (weight 1); outputs `teacher_entropy` and `kl`, the collapse monitor, for every batch."""

    loss_weights = {"dino": 1.0}

    def __init__(
        self,
        *,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int | None = None,
        center_momentum: float = 0.9,
        momentum_teacher: float = 0.996,
        freeze_last_layer: int = 1,
    ) -> None:
        self.student_temp, self.teacher_temp, self.warmup_teacher_temp = student_temp, teacher_temp, warmup_teacher_temp
        self.warmup_epochs = warmup_teacher_temp_epochs  # None: 30% of the run (the paper: 30 of 100 epochs)
        self.center_momentum, self.momentum_teacher = center_momentum, momentum_teacher
        self.freeze_last_layer = freeze_last_layer
        self.at = DinoSchedule()

    # ----- the schedules ----------------------------------------------------------------------------------------------
    def start_epoch(self, epoch: int, epochs: int, steps_per_epoch: int) -> None:
        self.at = DinoSchedule(epoch, epochs, (epoch - 1) * steps_per_epoch, epochs * steps_per_epoch)

    def current_teacher_temp(self) -> float:
        warm = self.warmup_epochs if self.warmup_epochs is not None else max(1, round(0.3 * self.at.epochs))
        return teacher_temperature(self.at.epoch - 1, warm, self.warmup_teacher_temp, self.teacher_temp)

    def current_momentum(self) -> float:
        return cosine_momentum(self.at.step, self.at.total_steps, self.momentum_teacher)

    # ----- one step ---------------------------------------------------------------------------------------------------
    def train_module(self, model: DinoModel) -> nn.Module:
        """The student (DDP syncs its gradients; the teacher is never in autograd); `model`'s teacher and center are
        what `step` uses."""
        self._dino = model
        return model.student_net

    def step(self, model: nn.Module, batch: MultiCropBatch) -> StepOutput:
        dino = self._dino
        globals_ = batch.crops[:2]
        with torch.no_grad():
            teacher = dino.teacher_net(globals_)  # 2 x (B, K)
        student = model(batch.crops)  # the student (DDP-wrapped under torchrun): V x (B, K)
        loss, stats = dino_loss(
            student_logits=student, teacher_logits=teacher, center=dino.center,
            student_temp=self.student_temp, teacher_temp=self.current_teacher_temp(),
        )  # fmt: skip
        if torch.is_grad_enabled():  # training: the center follows the teacher's (all ranks') batch mean
            dino.center.copy_(update_center(dino.center, torch.cat(teacher).float(), self.center_momentum))
        return StepOutput({"dino": loss}, stats)

    def before_optimizer_step(self, model: DinoModel) -> None:
        if self.at.epoch <= self.freeze_last_layer:
            for p in model.student_net.head.last_layer():
                p.grad = None  # AdamW skips a parameter without a gradient: no step, no weight decay

    def after_optimizer_step(self, model: DinoModel) -> None:
        ema_update_(model.teacher_net, model.student_net, self.current_momentum())
        self.at.step += 1
