"""The audio front end: Kaldi-style log-mel banks equal to transformers' ASTFeatureExtractor, hand-checked edge
cases, and reading files with soundfile."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from vitlab.data.audio import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    LOG_FLOOR,
    SpectrogramTransform,
    kaldi_mel_filters,
    log_mel_fbank,
    pad_or_crop,
    read_audio,
    write_audio,
)
from vitlab.errors import DataError

SR = 16_000


def _clip(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = 0.3 * np.sin(2 * np.pi * (300 + 2000 * t) * t)  # a chirp over noise
    return (tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")  # HF's note on 128 bins, as Kaldi's
@pytest.mark.parametrize("num_mel_bins", [128, 64])
def test_equals_transformers_ast_feature_extractor(num_mel_bins):
    transformers = pytest.importorskip("transformers")
    fe = transformers.ASTFeatureExtractor(num_mel_bins=num_mel_bins, max_length=300)
    wave = _clip(2.5)
    ref = fe(wave, sampling_rate=SR, return_tensors="np")["input_values"][0]  # (300, F), cropped and normalised
    ours = SpectrogramTransform(num_mel_bins, 300).bank(wave)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)  # 248 frames + zero padding, both normalised
    short = _clip(1.0)
    np.testing.assert_allclose(
        SpectrogramTransform(num_mel_bins, 300).bank(short),
        fe(short, sampling_rate=SR, return_tensors="np")["input_values"][0],
        atol=1e-4,
        rtol=0,
    )


def test_frame_count_and_constant_signal():
    # 1 + (S - 400) // 160 frames (Kaldi's snip_edges); a constant is all DC, removed per frame: the log floor
    bank = log_mel_fbank(np.full(16_000, 0.7), 128)
    assert bank.shape == (98, 128)
    np.testing.assert_allclose(bank, np.log(LOG_FLOOR), rtol=1e-6)
    with pytest.raises(ValueError, match="shorter than one 400-sample window"):
        log_mel_fbank(np.zeros(399))
    assert SpectrogramTransform(64, 10)(np.zeros(100, np.float32)).shape == (1, 64, 10)  # padded to one window


def test_tone_peaks_in_its_mel_bin():
    t = np.arange(SR) / SR
    bank = log_mel_fbank(np.sin(2 * np.pi * 1000 * t), 128)
    corners = librosa.mel_to_hz(np.linspace(librosa.hz_to_mel(20, htk=True), librosa.hz_to_mel(8000, htk=True), 130),
                                htk=True)  # fmt: skip
    nearest = int(np.argmin(np.abs(corners[1:-1] - 1000)))
    assert np.all(bank.argmax(axis=1) == nearest)


@pytest.mark.filterwarnings("ignore:Empty filters detected")
def test_mel_filters_are_kaldi_triangles_not_librosas():
    fb = kaldi_mel_filters(128)
    assert fb.shape == (128, 257) and fb.min() == 0 and fb.max() <= 1
    assert np.all(fb[:, -1] == 0)  # the Nyquist bin: the last triangle ends there
    # corners equally spaced on librosa's HTK mel scale, triangles linear in mel; librosa.filters.mel's are linear in
    # Hz between the same corners: close (narrow triangles), not equal, so its bank misses AST's by ~1e-3 in log
    lib = librosa.filters.mel(sr=SR, n_fft=512, n_mels=128, fmin=20, fmax=8000, htk=True, norm=None)
    assert 1e-3 < np.abs(fb - lib).max() < 1e-2
    np.testing.assert_array_equal(fb.argmax(axis=1)[1:], lib.argmax(axis=1)[1:])  # the same peak bins
    # 128 filters over 257 bins: the narrowest low ones catch no bin centre, as Kaldi's (and HF warns about)
    assert 0 < (fb.max(axis=1) == 0).sum() < 10


def test_pad_or_crop_and_normalisation():
    bank = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(pad_or_crop(bank, 2), bank[:2])
    padded = pad_or_crop(bank, 6)
    np.testing.assert_array_equal(padded[:4], bank)
    assert np.all(padded[4:] == 0)
    tf = SpectrogramTransform(128, 500)
    wave = _clip(1.0)
    x = tf(wave)
    assert x.shape == (1, 128, 500)
    # AST's normalisation (x - mean) / (2 std); padded frames are zeros before it
    expect = (0 - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    assert np.allclose(x[0, :, -1].numpy(), expect)
    np.testing.assert_allclose(x[0, :, :98].numpy().T, (log_mel_fbank(wave) - AUDIOSET_MEAN) / (2 * AUDIOSET_STD))


def test_read_audio_mono_resampled(tmp_path):
    t = np.arange(8000) / 8000
    left, right = 0.5 * np.sin(2 * np.pi * 200 * t), 0.1 * np.ones_like(t)
    path = tmp_path / "stereo.wav"
    import soundfile as sf

    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    wave = read_audio(path)
    assert wave.dtype == np.float32 and wave.shape == (16000,)  # 1 s at 8 kHz -> 16 kHz
    # the mean of the channels, resampled: its own mean is right's 0.1 / 2
    assert abs(wave[2000:-2000].mean() - 0.05) < 5e-3
    flac = tmp_path / "a.flac"
    write_audio(flac, np.sin(2 * np.pi * 440 * np.arange(SR) / SR) * 0.5)
    assert read_audio(flac).shape == (SR,)


def test_read_audio_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(DataError, match="broken.wav"):
        read_audio(bad)
    empty = tmp_path / "empty.wav"
    write_audio(empty, np.zeros(0))
    with pytest.raises(DataError, match="empty.wav holds no samples"):
        read_audio(empty)
    with pytest.raises(DataError, match="is a directory"):
        read_audio(tmp_path)
