"""Audio front end: files -> 16 kHz mono waveforms -> Kaldi-style log-mel filter banks, as AST's inputs.

Paper: "AST: Audio Spectrogram Transformer" (Gong et al., arXiv 2104.01778), sec. 2.1: 128 mel bins from a 25 ms
Hann window every 10 ms, normalised with the data set's mean and std, padded or cropped to a fixed number of frames.
AST computes the bank with `torchaudio.compliance.kaldi.fbank`; torchaudio is tied to one torch build (as
torchvision), so this file does the same arithmetic with librosa and numpy:

  per 400-sample frame (snip edges: no centring): remove the frame's mean (DC), pre-emphasis 0.97 (the first
  sample scaled by 1 - 0.97), symmetric Hann window, zero-padded 512-point FFT, power spectrum; 128 triangles
  spaced and shaped linearly on the mel scale 1127 ln(1 + f/700) between 20 Hz and Nyquist; natural log with
  float32 epsilon as the floor. Kaldi's defaults that differ from none of this: no dither, no energy term.

librosa supplies the resampling (`librosa.resample`), the framing (`librosa.util.frame`), the window and the mel
scale (`librosa.hz_to_mel(htk=True)` is 2595 log10(1 + f/700), the same curve). librosa's own
`librosa.filters.mel(htk=True)` is not used for the bank: its triangles are linear in Hz between the same mel-spaced
corners, Kaldi's are linear in mel; the weights differ by up to 0.0024 and the log bank by up to ~0.01 (median
0.001), and AST's weights were trained on Kaldi's (tests/test_audio_frontend.py).
The result equals transformers' `ASTFeatureExtractor` without torchaudio (its numpy path, which matches Kaldi's
arithmetic) to float precision; the test checks it.

Shapes: waveform (S,) samples; bank (T, F) frames x mel bins; model input (1, F, T) (frequency up, time across,
HF's `input_values` transposed), one channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from vitlab.errors import DataError

SAMPLE_RATE = 16_000  # AST's (AudioSet, ESC-50 and Speech Commands resampled to 16 kHz)
FRAME_LENGTH = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms
N_FFT = 512  # Kaldi rounds the window up to a power of two
PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Kaldi's default low edge of the first triangle
LOG_FLOOR = float(np.finfo(np.float32).eps)  # Kaldi's epsilon under the log
AUDIOSET_MEAN = -4.2677393  # AST's AudioSet statistics of the log-mel bank (the HF feature extractor's defaults)
AUDIOSET_STD = 4.5689974
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A file as a float32 mono waveform (S,) in [-1, 1] at `sample_rate`: channels averaged, resampled with librosa
    (soxr, high quality) when the file's rate differs; one DataError naming the file when it cannot be decoded."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"cannot read audio {path}: it is a directory")
    try:
        wave, rate = sf.read(path, dtype="float32", always_2d=True)  # (S, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as e:
        raise DataError(f"cannot read audio {path}: {e} (soundfile reads wav, flac, ogg and aiff)") from None
    if wave.shape[0] == 0:
        raise DataError(f"audio file {path} holds no samples")
    wave = wave.mean(axis=1)
    if rate != sample_rate:
        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """A mono float waveform as 16-bit PCM (wav, flac: from the suffix)."""
    sf.write(path, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")


def kaldi_mel_filters(num_mel_bins: int = 128, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """(num_mel_bins, n_fft // 2 + 1) triangular weights, linear on the mel scale: filter m rises from corner m to
    m + 1 and falls to m + 2, the num_mel_bins + 2 corners equally spaced in mel from LOW_FREQ to Nyquist (Kaldi's
    MelBanks). The Nyquist bin gets no weight, as in Kaldi."""
    fmax = sample_rate / 2
    corners = np.linspace(librosa.hz_to_mel(LOW_FREQ, htk=True), librosa.hz_to_mel(fmax, htk=True), num_mel_bins + 2)
    bins = librosa.hz_to_mel(np.arange(n_fft // 2 + 1) * sample_rate / n_fft, htk=True)  # (K,) each bin in mel
    left, centre, right = corners[:-2, None], corners[1:-1, None], corners[2:, None]  # (F, 1)
    up = (bins[None] - left) / (centre - left)
    down = (right - bins[None]) / (right - centre)
    return np.maximum(0.0, np.minimum(up, down))  # (F, K)


def log_mel_fbank(wave: np.ndarray, num_mel_bins: int = 128, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Kaldi-style log-mel filter bank (T, num_mel_bins), float32, T = 1 + (S - 400) // 160 frames (module
    docstring for the steps)."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform (S,), got shape {wave.shape}")
    if wave.shape[0] < FRAME_LENGTH:
        raise ValueError(f"a waveform of {wave.shape[0]} samples is shorter than one {FRAME_LENGTH}-sample window")
    frames = librosa.util.frame(wave, frame_length=FRAME_LENGTH, hop_length=HOP_LENGTH, axis=0)  # (T, 400), a view
    frames = frames - frames.mean(axis=1, keepdims=True)  # a new array: the DC offset of each frame removed
    frames[:, 1:] -= PREEMPHASIS * frames[:, :-1].copy()
    frames[:, 0] *= 1 - PREEMPHASIS  # Kaldi pre-emphasises the first sample against itself
    frames *= librosa.filters.get_window("hann", FRAME_LENGTH, fftbins=False)  # symmetric, Kaldi's "hanning"
    power = np.abs(np.fft.rfft(frames, n=N_FFT, axis=1)) ** 2  # (T, 257)
    mel = power @ kaldi_mel_filters(num_mel_bins, sample_rate).T  # (T, F)
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)


def pad_or_crop(bank: np.ndarray, max_length: int) -> np.ndarray:
    """(T, F) -> (max_length, F): zero frames appended at the end, or the first max_length frames (AST, HF)."""
    missing = max_length - bank.shape[0]
    if missing <= 0:
        return bank[:max_length]
    return np.concatenate([bank, np.zeros((missing, bank.shape[1]), bank.dtype)])


@dataclass(frozen=True)
class SpectrogramTransform:
    """Waveform (S,) at 16 kHz -> model input (1, num_mel_bins, max_length): bank, pad/crop, then AST's
    normalisation (x - mean) / (2 std) (padded frames are normalised too, as in AST and HF)."""

    num_mel_bins: int = 128
    max_length: int = 1024  # frames: 1024 = 10.24 s, AudioSet's clips
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD
    sample_rate: int = SAMPLE_RATE

    @classmethod
    def for_model(cls, model) -> SpectrogramTransform:
        """The bank size, length and statistics an AST model's config was built for."""
        c = model.cfg
        return cls(c.num_mel_bins, c.max_length, c.audio_mean, c.audio_std, c.sample_rate)

    def bank(self, wave: np.ndarray) -> np.ndarray:
        """(max_length, num_mel_bins) normalised: HF's `input_values` for one clip (a clip shorter than one window is
        zero-padded to it)."""
        wave = np.pad(wave, (0, max(0, FRAME_LENGTH - len(wave))))
        bank = pad_or_crop(log_mel_fbank(wave, self.num_mel_bins, self.sample_rate), self.max_length)
        return (bank - self.mean) / (2 * self.std)

    def __call__(self, wave: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.bank(wave).T))[None]  # (1, F, T)


def check_audio(path: str | Path) -> None:
    """soundfile can open `path` and it holds samples (a header read, no decoding), or one DataError naming it."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"cannot read audio {path}: it is a directory")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as e:
        raise DataError(f"cannot read audio {path}: {e} (soundfile reads wav, flac, ogg and aiff)") from None
    if info.frames == 0:
        raise DataError(f"audio file {path} holds no samples")


class AudioFolder(Dataset):
    """root/CLASS_NAME/*.wav|flac|ogg|aiff; classes sorted by name (as ImageFolder). Item i -> (16 kHz mono waveform
    (S,) float32, label). Every file's header is checked at construction: an unreadable one is named at once."""

    def __init__(self, root: str | Path, samples: list[tuple[Path, int]] | None = None, classes=None) -> None:
        self.root = Path(root)
        self.source = str(self.root)
        if samples is not None:
            self.samples, self.classes = samples, classes
            return
        if not self.root.is_dir():
            raise DataError(f"audio directory {self.root} {'is a file' if self.root.exists() else 'does not exist'}")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"audio directory {self.root} has no class sub-directories (expected ROOT/CLASS/FILE.wav)")
        self.samples = []
        for label, name in enumerate(self.classes):
            files = sorted(
                p for p in (self.root / name).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
            )
            self.samples += [(p, label) for p in files]
        if not self.samples:
            raise DataError(
                f"audio directory {self.root} has class folders but no audio files "
                f"({', '.join(sorted(AUDIO_SUFFIXES))})"
            )
        for path, _ in self.samples:
            check_audio(path)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[i]
        return read_audio(path), label

    def subset(self, idx) -> AudioFolder:
        return AudioFolder(self.root, [self.samples[i] for i in idx], self.classes)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


class SpectrogramDataset(Dataset):
    """(waveform, label) -> (model input (1, F, T), label), each bank computed once and kept (clips are not
    augmented: the same input every epoch)."""

    def __init__(self, base: Dataset, transform: SpectrogramTransform) -> None:
        self.base, self.transform = base, transform
        self._cache: dict[int, tuple[torch.Tensor, int]] = {}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i not in self._cache:
            wave, label = self.base[i]
            self._cache[i] = (self.transform(wave), label)
        return self._cache[i]
