"""Audio classification as a vision problem (AST, arXiv 2104.01778): log-mel spectrograms as one-channel images.

Data: `--data sounds` (the embedded generated classes, `vitlab.data.sounds`: tones, chirps, sirens, noise bursts,
click rhythms; train and test from different seeds) or an audio folder `--data DIR` (DIR/CLASS/*.wav|flac|..., or
DIR/train + DIR/val|test), read with soundfile and resampled to 16 kHz. The bank is computed for the model's mel bins
and length (`SpectrogramTransform.for_model`); batches are `ImageBatch`es of (B, 1, F, T), so the method, the
evaluator and the report are classification's. `--init-vit` starts the AST from ImageNet ViT / DeiT weights (sec. 2.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from vitlab.data import DataSplits
from vitlab.data.audio import AudioFolder, SpectrogramDataset, SpectrogramTransform
from vitlab.data.datasets import folder_splits
from vitlab.data.sounds import GeneratedSounds
from vitlab.engine.report import Section, new_figure
from vitlab.engine.tasks.classification import ClassificationConfig, ClassificationTask
from vitlab.errors import CheckpointError, ConfigError, DataError
from vitlab.models.ast import init_from_vit
from vitlab.weights import read_pretrained


@dataclass(frozen=True)
class AudioConfig(ClassificationConfig):
    sounds_train: int = field(default=100, metadata={"help": "generated clips per class for training (--data sounds)"})
    sounds_test: int = field(default=25, metadata={"help": "generated clips per class for testing (--data sounds)"})
    init_vit: str | None = field(
        default=None,
        metadata={"help": "ImageNet ViT/DeiT checkpoint (vitlab, timm or transformers) to start the AST from: patch "
                  "filters averaged over RGB, positions fitted to the spectrogram grid"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        for flag, v in (("--sounds-train", self.sounds_train), ("--sounds-test", self.sounds_test)):
            if v < 1:
                raise ConfigError(f"{flag} must be >= 1, got {v}")


def load_audio_data(spec: str, test_fraction: float, tcfg: AudioConfig) -> DataSplits:
    if spec == "sounds":
        train, test = GeneratedSounds(tcfg.sounds_train, seed=0), GeneratedSounds(tcfg.sounds_test, seed=1)
        return DataSplits(train, test, train.classes, natural_images=False)
    root = Path(spec)
    if not root.exists():
        raise DataError(f"--data {spec!r}: not 'sounds' and not an audio directory (ROOT/CLASS/FILE.wav)")
    train, test = folder_splits(root, AudioFolder, test_fraction, "audio file")
    return DataSplits(train, test, train.classes, natural_images=False)


class AudioTask(ClassificationTask):
    name = "audio"
    help = "sound classes from log-mel spectrograms (AST): cross-entropy, top-1/top-5, confusion matrix"
    config_cls = AudioConfig
    default_data = "sounds"
    default_model = "ast_micro_patch16_stride10_64x200"
    model_kind = "audio"
    run_defaults = {"epochs": 15, "batch_size": 32, "lr": 1e-3, "warmup_epochs": 1.0}

    def load_data(self, spec: str, test_fraction: float, tcfg: AudioConfig) -> DataSplits:
        splits = load_audio_data(spec, test_fraction, tcfg)
        if len(splits.classes) < 2:
            raise DataError(f"--data {spec}: audio classification needs at least 2 classes, found "
                            f"{len(splits.classes)}")  # fmt: skip
        return splits

    def prepare_model(self, model: nn.Module, tcfg: AudioConfig) -> None:
        if tcfg.init_vit is None:
            return
        ckpt = read_pretrained(tcfg.init_vit)
        try:
            init_from_vit(model, ckpt.state)
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"--init-vit {tcfg.init_vit}: not ViT/DeiT weights for this AST ({e})") from None

    def datasets(self, splits: DataSplits, model: nn.Module, augment: bool, tcfg: AudioConfig):
        if not hasattr(model.cfg, "num_mel_bins"):
            raise ConfigError(f"{getattr(model, 'model_name', type(model).__name__)} is not a spectrogram model")
        tf = SpectrogramTransform.for_model(model)
        return SpectrogramDataset(splits.train, tf), SpectrogramDataset(splits.test, tf)

    def check_model(self, model: nn.Module, splits: DataSplits, where: str) -> None:
        if not hasattr(model.cfg, "num_mel_bins"):
            raise ConfigError(f"{where} is audio; {getattr(model, 'model_name', 'the checkpoint')} is not an AST")
        super().check_model(model, splits, where)

    def report_sections(self, result, splits: DataSplits) -> list[Section]:
        return [*super().report_sections(result, splits), Section("Example spectrograms", figures={
            "spectrograms.png": plot_examples(splits)})]  # fmt: skip


def plot_examples(splits: DataSplits):
    """The first test clip of each class as a 64-bin log-mel bank of 2 s, frequency up."""
    tf = SpectrogramTransform(64, 200)
    test, K = splits.test, len(splits.classes)
    firsts: dict[int, int] = {}
    for i, y in enumerate(test.targets):
        firsts.setdefault(y, i)
    cols = min(4, K)
    rows = -(-K // cols)
    fig = new_figure(3.0 * cols, 2.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < K and k in firsts:
            bank = tf.bank(test[firsts[k]][0])
            ax.imshow(bank.T, origin="lower", aspect="auto", cmap="magma")
            ax.set_title(splits.classes[k], fontsize=9)
    return fig
