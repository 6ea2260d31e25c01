"""Video data: clips held in memory, folders of video files decoded with PyAV, folders of frame images, and the
frame sampling that turns a clip of any length into the T frames a model takes.

Layouts (classes are the sorted sub-directory names, as ImageFolder's):
- videos: ROOT/CLASS/NAME.mp4 (any container FFmpeg reads: .mp4 .avi .mkv .mov .webm .gif ...), decoded with PyAV;
- frame folders: ROOT/CLASS/CLIP/0001.png ... (one directory per clip, frames in name order).
ROOT/train + ROOT/val (or test) give the splits; otherwise one folder is split stratified (seed 0).

Sampling (`sample_indices`): "uniform" takes T frames spread evenly over the whole clip (segment centres, as TSN and
the ViViT evaluation do; T = 1 gives the middle frame); "random" takes T frames `stride` apart from a random start
for training, and the centred window for evaluation (the TimeSformer / SlowFast protocol at one view).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vitlab.data.datasets import IMAGE_SUFFIXES, folder_splits, read_image
from vitlab.errors import DataError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".gif", ".ogv", ".wmv", ".flv"}
SAMPLINGS = ("uniform", "random")


def sample_indices(n: int, T: int, mode: str = "uniform", stride: int = 1, rng: np.random.Generator | None = None):
    """T frame indices into a clip of n frames. uniform: the centres of T equal segments; random: T frames `stride`
    apart from a random start (`rng`), or the centred window when rng is None; clips too short repeat their last."""
    if n < 1:
        raise ValueError("a clip needs at least one frame")
    if mode == "uniform":
        return [min(n - 1, int((k + 0.5) * n / T)) for k in range(T)]
    if mode != "random":
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {mode!r}")
    span = (T - 1) * stride + 1
    room = max(0, n - span)
    start = int(rng.integers(0, room + 1)) if rng is not None else room // 2
    return [min(n - 1, start + k * stride) for k in range(T)]


class ClipSource(Dataset):
    """What the video data sets share: `frame_count(i)`, `read(i, indices)` -> uint8 (T, C, H, W), `targets`."""

    classes: list[str]

    def frame_count(self, i: int) -> int:
        raise NotImplementedError

    def read(self, i: int, indices: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def label(self, i: int) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """The whole clip, uint8 (T, C, H, W), and its label."""
        return self.read(i, list(range(self.frame_count(i)))), self.label(i)


class ArrayClips(ClipSource):
    """Clips in memory: uint8 (N, T, C, H, W) and labels (N,)."""

    def __init__(self, clips: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
        if clips.dtype != torch.uint8 or clips.ndim != 5 or len(clips) != len(labels):
            raise ValueError(f"clips must be uint8 (N, T, C, H, W) beside N labels, got {tuple(clips.shape)}")
        self.clips, self.labels, self.classes = clips, labels.long(), classes

    def __len__(self) -> int:
        return len(self.clips)

    def frame_count(self, i: int) -> int:
        return self.clips.shape[1]

    def read(self, i: int, indices: list[int]) -> torch.Tensor:
        return self.clips[i, indices]

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def subset(self, idx) -> ArrayClips:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ArrayClips(self.clips[idx], self.labels[idx], self.classes)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()


def _av():
    try:
        import av
    except ImportError:
        raise DataError("reading video files needs PyAV (pip install av)") from None
    return av


def count_frames(path: Path) -> int:
    """Frames of the first video stream: the container's count, or a full decode where it gives none."""
    av = _av()
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise DataError(f"cannot read video {path}: it has no video stream")
            n = c.streams.video[0].frames
            if n <= 0:
                n = sum(1 for _ in c.decode(video=0))
    except av.FFmpegError as e:
        raise DataError(f"cannot read video {path}: {e}") from None
    if n < 1:
        raise DataError(f"cannot read video {path}: no frames decoded")
    return n


def read_video(path: Path, indices: list[int]) -> torch.Tensor:
    """uint8 (len(indices), 3, H, W) RGB frames at `indices` (repeats allowed), decoding no further than the last."""
    av = _av()
    want = set(indices)
    last = max(indices)
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as c:
            for k, frame in enumerate(c.decode(video=0)):
                if k in want:
                    frames[k] = frame.to_ndarray(format="rgb24")
                if k >= last:
                    break
    except av.FFmpegError as e:
        raise DataError(f"cannot read video {path}: {e}") from None
    if not frames:
        raise DataError(f"cannot read video {path}: no frames decoded")
    have = sorted(frames)
    # a container may count more frames than it decodes: the last decoded frame stands in for the missing ones
    clip = np.stack([frames.get(i, frames[have[-1]]) for i in indices])  # (T, H, W, 3)
    return torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous()


class VideoFolder(ClipSource):
    """ROOT/CLASS/*.mp4 (or frame folders ROOT/CLASS/CLIP/*.png with frames=True)."""

    def __init__(self, root: str | Path, frames: bool = False, samples=None, classes=None, counts=None) -> None:
        self.root, self.frames = Path(root), frames
        if samples is not None:
            self.samples, self.classes, self.counts = samples, classes, counts
            return
        if not self.root.is_dir():
            raise DataError(f"video data {self.root} is not a directory (expected ROOT/CLASS/VIDEO)")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"video data {self.root} has no class sub-directories (expected ROOT/CLASS/VIDEO)")
        self.samples = []
        for label, name in enumerate(self.classes):
            entries = sorted(p for p in (self.root / name).iterdir() if not p.name.startswith("."))
            if frames:
                found = [p for p in entries if p.is_dir() and _frame_files(p)]
            else:
                found = [p for p in entries if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
            self.samples += [(p, label) for p in found]
        if not self.samples:
            what = "clip folders of images" if frames else f"videos ({', '.join(sorted(VIDEO_SUFFIXES))})"
            raise DataError(f"video data {self.root} has class folders but no {what}")
        # every file is opened now (a corrupt one is named here, not at epoch 7) and its length kept for sampling
        self.counts = [len(_frame_files(p)) if frames else count_frames(p) for p, _ in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def frame_count(self, i: int) -> int:
        return self.counts[i]

    def label(self, i: int) -> int:
        return self.samples[i][1]

    def read(self, i: int, indices: list[int]) -> torch.Tensor:
        path = self.samples[i][0]
        if not self.frames:
            return read_video(path, indices)
        files = _frame_files(path)
        images = {j: read_image(files[j]) for j in set(indices)}
        shapes = {tuple(im.shape) for im in images.values()}
        if len(shapes) > 1:
            raise DataError(f"clip {path}: frames of different sizes or channels {sorted(shapes)}")
        return torch.stack([images[j] for j in indices])

    def subset(self, idx) -> VideoFolder:
        return VideoFolder(self.root, self.frames, [self.samples[i] for i in idx], self.classes,
                           [self.counts[i] for i in idx])  # fmt: skip

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


def _frame_files(clip_dir: Path) -> list[Path]:
    return sorted(p for p in clip_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def looks_like_frame_folders(root: Path) -> bool:
    """Whether ROOT/CLASS/ holds clip directories (frame folders) rather than video files."""
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for p in d.iterdir():
            if p.is_dir():
                return True
            if p.suffix.lower() in VIDEO_SUFFIXES:
                return False
    return False


def load_video_folders(root: str | Path, test_fraction: float, frames: bool | None = None):
    """(train, test, classes) of a video or frame-folder tree: ROOT/train + ROOT/val|test, or one folder split."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"video data {root} is not a directory (expected ROOT/CLASS/VIDEO or ROOT/CLASS/CLIP/FRAME)")
    train, test = folder_splits(
        root, lambda p: VideoFolder(p, looks_like_frame_folders(p) if frames is None else frames), test_fraction, "clip"
    )
    return train, test, train.classes


class SampledClips(Dataset):
    """(model input clip (T, C, H, W) float, label): T frames sampled from each clip, each frame transformed.

    `train` draws random clips (sampling "random"); evaluation is deterministic. One transform per frame keeps the
    frames aligned (the same resize and normalisation); no flips or crops, which would change a motion's direction.
    """

    def __init__(self, base: ClipSource, T: int, transform, sampling: str = "uniform", stride: int = 1,
                 train: bool = False, seed: int = 0) -> None:  # fmt: skip
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        self.base, self.T, self.transform = base, T, transform
        self.sampling, self.stride, self.train = sampling, stride, train
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rng = self.rng if self.train and self.sampling == "random" else None
        idx = sample_indices(self.base.frame_count(i), self.T, self.sampling, self.stride, rng)
        clip = self.base.read(i, idx)  # (T, C, H, W) uint8
        return torch.stack([self.transform(f) for f in clip]), self.base.label(i)
