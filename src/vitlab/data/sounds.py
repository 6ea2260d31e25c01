"""The embedded audio data set: eight classes of generated sounds, 2 s at 16 kHz, each clip made from its own seed.

Classes differ in what a spectrogram shows, the way AST's classes do (ESC-50's sirens, clock ticks, engines):
  tone        one steady sine                         harmonic    a sine with its first six overtones (1/k)
  chirp_up    an exponential sweep upward (x2-x6)     chirp_down  the same sweep downward
  siren       a sine whose pitch swings slowly (1-3 Hz, +-15-35 %)
  tremolo     a steady sine whose loudness pulses (4-12 Hz)
  noise_bursts 2-5 bursts of white noise, 40-200 ms, at random times
  clicks      a regular rhythm of short decaying clicks (3-10 per second)
Every clip draws its pitch (log-uniform, 150-2500 Hz, rescaled so its content stays under 7 kHz), its onset and
length (0.8-2 s of the 2 s), its loudness (peak 0.05-0.9, log-uniform) and a background noise floor (SNR 10-40 dB):
only the class's pattern decides the label. Clip i of split `seed` comes from `np.random.default_rng((seed, i))`,
so any subset is the same clips in any order, and train (seed 0) and test (seed 1) never share a clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from vitlab.data.audio import SAMPLE_RATE, write_audio

SOUND_CLASSES = ("tone", "harmonic", "chirp_up", "chirp_down", "siren", "tremolo", "noise_bursts", "clicks")
CLIP_SECONDS = 2.0
_NYQUIST_SAFE = 7000.0  # Hz: every generated partial stays below it (no aliasing at 16 kHz)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _envelope(n: int, rng: np.random.Generator) -> np.ndarray:
    """0 outside a random [onset, onset + length) span, 10-50 ms linear fades inside it."""
    length = int(rng.uniform(0.8, 1.0) * n) if rng.random() < 0.5 else int(rng.uniform(0.4, 0.8) * n)
    start = int(rng.integers(0, n - length + 1))
    fade = max(1, int(rng.uniform(0.01, 0.05) * SAMPLE_RATE))
    env = np.zeros(n)
    ramp = np.minimum(1.0, np.minimum(np.arange(length) + 1, np.arange(length)[::-1] + 1) / fade)
    env[start : start + length] = ramp
    return env


def _sine(phase_hz: np.ndarray) -> np.ndarray:
    """sin of the running phase of an instantaneous frequency (Hz per sample)."""
    return np.sin(2 * np.pi * np.cumsum(phase_hz) / SAMPLE_RATE)


def make_sound(label: int, rng: np.random.Generator, seconds: float = CLIP_SECONDS) -> np.ndarray:
    """One float32 clip of class `label` (SOUND_CLASSES), peak-normalised to a random loudness, noise added."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    name = SOUND_CLASSES[label]
    f0 = _log_uniform(rng, 150, 2500)
    env = _envelope(n, rng)
    if name == "tone":
        x = _sine(np.full(n, f0))
    elif name == "harmonic":
        f0 = min(f0, _NYQUIST_SAFE / 6)
        x = sum(_sine(np.full(n, k * f0)) / k for k in range(1, 7))
    elif name in ("chirp_up", "chirp_down"):
        ratio = rng.uniform(2, 6)
        lo = min(f0, _NYQUIST_SAFE / ratio)
        span = max(env.sum() / SAMPLE_RATE, 0.1)
        on = np.argmax(env > 0) / SAMPLE_RATE
        u = np.clip((t - on) / span, 0, 1)  # 0 -> 1 over the sounding part
        u = u if name == "chirp_up" else 1 - u
        x = _sine(lo * ratio**u)
    elif name == "siren":
        depth, rate = rng.uniform(0.15, 0.35), rng.uniform(1, 3)
        f0 = min(f0, _NYQUIST_SAFE / (1 + depth))
        x = _sine(f0 * (1 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))))
    elif name == "tremolo":
        rate = rng.uniform(4, 12)
        am = 0.5 * (1 + np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
        x = _sine(np.full(n, f0)) * am
    elif name == "noise_bursts":
        x = np.zeros(n)
        for _ in range(int(rng.integers(2, 6))):
            length = int(rng.uniform(0.04, 0.2) * SAMPLE_RATE)
            start = int(rng.integers(0, n - length))
            x[start : start + length] += rng.standard_normal(length) * np.hanning(length)
        env = np.ones(n)  # the bursts are their own envelope
    else:  # clicks
        period = int(SAMPLE_RATE / rng.uniform(3, 10))
        decay = np.exp(-np.arange(int(0.006 * SAMPLE_RATE)) / (0.0015 * SAMPLE_RATE))
        click = decay * rng.choice([-1.0, 1.0], size=decay.shape)
        x = np.zeros(n)
        for start in range(int(rng.integers(0, period)), n - click.size, period):
            x[start : start + click.size] += click
        env = np.ones(n)
    x = x * env
    x = x / (np.abs(x).max() + 1e-12) * _log_uniform(rng, 0.05, 0.9)
    rms = np.sqrt(np.mean(x[env > 0] ** 2))
    noise = rng.standard_normal(n) * rms * 10 ** (-rng.uniform(10, 40) / 20)
    return (x + noise).astype(np.float32)


class GeneratedSounds(Dataset):
    """`per_class` clips of each of SOUND_CLASSES, interleaved by class; item i -> (waveform (S,) float32, label)."""

    def __init__(self, per_class: int, seed: int = 0, classes: tuple[str, ...] = SOUND_CLASSES) -> None:
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        self.per_class, self.seed = per_class, seed
        self.classes = list(classes)
        self.source = f"generated sounds (seed {seed})"

    def __len__(self) -> int:
        return self.per_class * len(self.classes)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        label = i % len(self.classes)
        return make_sound(SOUND_CLASSES.index(self.classes[label]), np.random.default_rng((self.seed, i))), label

    @property
    def targets(self) -> list[int]:
        return [i % len(self.classes) for i in range(len(self))]


def write_sounds(out: Path, train_per_class: int, val_per_class: int, seed: int = 0) -> dict[str, int]:
    """The generated set as an audio folder: OUT/train/CLASS/NNNN.wav and OUT/val/CLASS/NNNN.wav (16-bit PCM, 16 kHz),
    train from `seed`, val from `seed + 1`. Returns the clips written per split."""
    counts = {}
    for split, per_class, s in (("train", train_per_class, seed), ("val", val_per_class, seed + 1)):
        data = GeneratedSounds(per_class, seed=s)
        for name in data.classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(len(data)):
            wave, label = data[i]
            write_audio(out / split / data.classes[label] / f"{i:05d}.wav", wave)
        counts[split] = len(data)
    return counts
