"""Video classification: ClipBatch (B, T, C, H, W), cross-entropy, top-1 / top-5 and the confusion matrix.

Data: `--data moving` (the embedded generated clips, `vitlab.data.moving`: the label is the motion, so one frame
cannot tell it), a folder of videos decoded with PyAV (ROOT/CLASS/NAME.mp4) or of frame folders
(ROOT/CLASS/CLIP/*.png), `videos:DIR` / `frames:DIR` to name the layout. Each clip gives the model's num_frames
frames (`--sampling uniform` over the whole clip, or `random` windows `--frame-stride` apart for training); `--frames`
changes the model's clip length (`--frames 1` on a TimeSformer: the single-frame baseline on the middle frame).
Frames are resized and normalised for the model, never flipped or cropped at random: a flip would turn "left" into
"right".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vitlab.data import DataSplits, ImageTransform
from vitlab.data.batches import collate_clips
from vitlab.data.moving import MOTIONS, moving_shapes
from vitlab.data.video import SAMPLINGS, ArrayClips, SampledClips, load_video_folders
from vitlab.engine.evaluators.video import VideoClassificationEvaluator
from vitlab.engine.tasks.base import TaskConfig
from vitlab.engine.tasks.classification import ClassificationTask
from vitlab.errors import ConfigError, DataError
from vitlab.methods.video import VideoSupervised


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class VideoConfig(TaskConfig):
    label_smoothing: float = _f(0.1, "label smoothing of the cross-entropy")
    frames: int = _f(0, "frames per clip the model takes (0: the model's num_frames; 1 on a TimeSformer: one frame)")
    sampling: str = _f("uniform", "training clips: uniform (T frames over the whole clip) or random (a random "
                                  "window, frames --frame-stride apart); evaluation is deterministic")  # fmt: skip
    frame_stride: int = _f(2, "frames between sampled frames of a random window")
    moving_train: int = _f(1800, "clips in the generated moving-shape set's training split (--data moving)")
    moving_val: int = _f(600, "clips in its validation split")
    moving_frames: int = _f(8, "frames per generated clip")
    moving_size: int = _f(16, "side of the generated frames")

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"--sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        lows = {
            "frames": 0,
            "frame_stride": 1,
            "moving_train": 6,
            "moving_val": 6,
            "moving_frames": 2,
            "moving_size": 12,
        }
        for name, low in lows.items():
            v = getattr(self, name)
            if v < low:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be >= {low}, got {v}")


class VideoTask(ClassificationTask):
    """Classification's report and summary (confusion matrix, per-class accuracy) on clips."""

    name = "video"
    help = "one label per clip (ViViT, TimeSformer): cross-entropy, top-1/top-5, confusion matrix"
    config_cls = VideoConfig
    collate = staticmethod(collate_clips)
    default_data = "moving"
    default_model = "vivit_micro_patch4x2_16"
    model_kind = "video"
    # Measured on the moving clips: the micro models sit at chance for ~150 steps of 32 clips before the motion is
    # found; a warm-up from 0 and an early cosine decay kept them there for all 560 steps of 10 epochs, a constant
    # 1e-3 left chance in epoch 4. So no warm-up, and cosine only down to 1e-4.
    run_defaults = {"lr": 1e-3, "min_lr": 1e-4, "warmup_epochs": 0.0, "batch_size": 32, "epochs": 12}

    def load_data(self, spec: str, test_fraction: float, tcfg: VideoConfig) -> DataSplits:
        if spec == "moving":
            classes = list(MOTIONS)
            n, size = tcfg.moving_frames, tcfg.moving_size
            train = ArrayClips(*moving_shapes(tcfg.moving_train, n, size, seed=0), classes)
            test = ArrayClips(*moving_shapes(tcfg.moving_val, n, size, seed=1), classes)
            return DataSplits(train, test, classes, natural_images=False)
        kind, _, path = spec.partition(":")
        frames = {"videos": False, "frames": True}.get(kind) if path else None
        root = path if frames is not None else spec
        try:
            train, test, classes = load_video_folders(root, test_fraction, frames)
        except DataError as e:
            raise DataError(f"--data {spec}: {e} (or --data moving, the generated clips)") from None
        if len(classes) < 2:
            raise DataError(f"--data {spec}: video classification needs at least 2 classes, found {len(classes)}")
        return DataSplits(train, test, classes, natural_images=True)

    def model_kwargs(self, splits: DataSplits, tcfg: VideoConfig) -> dict:
        kw = super().model_kwargs(splits, tcfg)
        return {**kw, "num_frames": tcfg.frames} if tcfg.frames else kw

    def check_model(self, model: nn.Module, splits: DataSplits, where: str) -> None:
        if not hasattr(model, "num_frames"):
            raise ConfigError(f"{getattr(model, 'model_name', type(model).__name__)} is not a video model")
        super().check_model(model, splits, where)

    def datasets(self, splits: DataSplits, model: nn.Module, augment: bool, tcfg: VideoConfig):
        tf = ImageTransform.for_model(model)  # per frame: resize to the model's size, its channels and mean/std
        T = model.cfg.num_frames
        train = SampledClips(splits.train, T, tf, tcfg.sampling, tcfg.frame_stride, train=augment)
        return train, SampledClips(splits.test, T, tf, tcfg.sampling, tcfg.frame_stride)

    def build_method(self, tcfg: VideoConfig, splits: DataSplits, device: torch.device) -> VideoSupervised:
        return VideoSupervised(tcfg.label_smoothing)

    def build_evaluator(self, splits: DataSplits, tcfg: VideoConfig) -> VideoClassificationEvaluator:
        return VideoClassificationEvaluator(len(splits.classes))
