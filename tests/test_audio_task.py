"""The audio task: the generated sound classes, audio folders read with soundfile, and train / eval / predict through
the CLI as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vitlab.cli.main import main
from vitlab.data.audio import AudioFolder, log_mel_fbank, read_audio, write_audio
from vitlab.data.sounds import SOUND_CLASSES, GeneratedSounds, make_sound
from vitlab.errors import DataError

SR = 16_000


def test_generated_sounds_are_deterministic_balanced_and_bounded():
    a, b = GeneratedSounds(3, seed=0), GeneratedSounds(3, seed=0)
    assert len(a) == 24 and a.classes == list(SOUND_CLASSES) and np.bincount(a.targets).tolist() == [3] * 8
    for i in (0, 5, 23):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        assert a[i][1] == i % 8
    assert not np.array_equal(a[5][0], GeneratedSounds(3, seed=1)[5][0])  # test clips are other clips
    for i in range(len(a)):
        wave = a[i][0]
        assert wave.shape == (2 * SR,) and wave.dtype == np.float32 and 0.01 < np.abs(wave).max() < 1.0


def test_each_class_shows_its_pattern():
    rng = np.random.default_rng(0)
    banks = {name: log_mel_fbank(make_sound(k, rng), 64) for k, name in enumerate(SOUND_CLASSES)}

    def ridge(bank):  # the mel bin standing out most above the background (a quiet frame) where one does
        lift = bank - np.percentile(bank, 10, axis=0)
        return lift.argmax(axis=1)[lift.max(axis=1) > 4]

    up, down = ridge(banks["chirp_up"]), ridge(banks["chirp_down"])
    assert up[-1] > up[0] and down[-1] < down[0]  # the sweeps go their way
    tone = ridge(banks["tone"])
    assert np.ptp(tone) <= 1  # one steady pitch
    # impulsive classes are broadband: their loudest frame stands out in most bins, a tone's in a few
    lift = {n: banks[n] - np.percentile(banks[n], 10, axis=0) for n in ("clicks", "noise_bursts", "tone")}
    for name in ("clicks", "noise_bursts"):
        assert (lift[name][lift[name].mean(axis=1).argmax()] > 3).mean() > 0.6, name
    assert (lift["tone"][lift["tone"].max(axis=1).argmax()] > 3).mean() < 0.25


def _folder(root: Path, per_class: int = 3) -> None:
    data = GeneratedSounds(per_class, seed=3, classes=("tone", "clicks"))
    for i in range(len(data)):
        wave, label = data[i]
        (root / data.classes[label]).mkdir(parents=True, exist_ok=True)
        write_audio(root / data.classes[label] / f"{i}.flac" if i % 2 else root / data.classes[label] / f"{i}.wav",
                    wave[: SR])  # fmt: skip


def test_audio_folder_reads_classes_and_names_a_bad_file(tmp_path):
    _folder(tmp_path / "a")
    data = AudioFolder(tmp_path / "a")
    assert data.classes == ["clicks", "tone"] and len(data) == 6 and sorted(data.targets) == [0, 0, 0, 1, 1, 1]
    wave, label = data[0]
    assert wave.shape == (SR,) and wave.dtype == np.float32
    np.testing.assert_allclose(wave, read_audio(data.samples[0][0]))
    (tmp_path / "a" / "tone" / "broken.wav").write_bytes(b"not a riff file at all")
    with pytest.raises(DataError, match="broken.wav"):
        AudioFolder(tmp_path / "a")
    (tmp_path / "b" / "x").mkdir(parents=True)
    (tmp_path / "b" / "x" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no audio files"):
        AudioFolder(tmp_path / "b")
    with pytest.raises(DataError, match="does not exist"):
        AudioFolder(tmp_path / "none")


# ----- through the CLI --------------------------------------------------------------------------------------------
SMALL = ["train", "--task", "audio", "--sounds-train", "6", "--sounds-test", "2", "--batch-size", "16"]


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audio") / "run"
    assert main([*SMALL, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_train_writes_a_report_and_eval_reads_it(audio_run, capsys):
    cfg = json.loads((audio_run / "config.json").read_text())
    assert cfg["model"] == "ast_micro_patch16_stride10_64x200" and cfg["data"] == "sounds"
    report = (audio_run / "report.md").read_text()
    assert "Confusion matrix" in report and "spectrograms.png" in report and (audio_run / "spectrograms.png").is_file()
    final = json.loads((audio_run / "final_metrics.json").read_text())
    assert 0 <= final["top1"] <= 1
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(audio_run)]) == 0
    text = capsys.readouterr().out
    assert "task audio" in text and "top-1" in text and "chirp_up" in text


def test_predict_on_wav_files(audio_run, tmp_path, capsys):
    paths = []
    for k in (0, 7):
        paths.append(str(tmp_path / f"{SOUND_CLASSES[k]}.wav"))
        write_audio(paths[-1], make_sound(k, np.random.default_rng(k)))
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(audio_run), "--topk", "3", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == paths[0] and len(lines) == 8 and lines[1].split()[0] in SOUND_CLASSES
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"\x00" * 50)
    assert main(["predict", "--checkpoint", str(audio_run), str(bad)]) == 2
    assert "bad.wav" in capsys.readouterr().err
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(img)
    assert main(["predict", "--checkpoint", str(audio_run), str(img)]) == 2
    assert "is an audio model but the files are images" in capsys.readouterr().err


@pytest.mark.slow
def test_train_on_an_audio_folder_from_vitlab_data_sounds(tmp_path, capsys):
    root = tmp_path / "snd"
    assert main(["data", "sounds", "--out", str(root), "--train", "3", "--val", "1"]) == 0
    assert len(list((root / "train" / "siren").glob("*.wav"))) == 3 and len(list((root / "val").rglob("*.wav"))) == 8
    out = tmp_path / "run"
    assert main(["train", "--task", "audio", "--data", str(root), "--epochs", "1", "--out", str(out)]) == 0
    import vitlab

    assert list(vitlab.load_checkpoint(out).cfg.labels) == sorted(SOUND_CLASSES)  # the folder names, sorted


def test_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "one" / "only").mkdir(parents=True)
    write_audio(tmp_path / "one" / "only" / "a.wav", np.zeros(SR))
    write_audio(tmp_path / "one" / "only" / "b.wav", np.zeros(SR))
    for args, message in [
        (["--sounds-train", "0"], "--sounds-train must be >= 1"),
        (["--data", str(tmp_path / "none")], "not 'sounds' and not an audio directory"),
        (["--data", str(tmp_path / "one")], "needs at least 2 classes"),
        (["--model", "vit_micro_patch4_8"], "--task audio trains"),
        (["--init-vit", str(tmp_path / "missing.safetensors")], "missing.safetensors is missing"),
    ]:
        out = tmp_path / "r"
        assert main([*SMALL, "--epochs", "1", "--out", str(out), *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
        assert not out.exists()


@pytest.mark.slow
def test_init_vit_starts_from_a_vit_checkpoint(tmp_path):
    import vitlab

    vit = vitlab.create_model("vit_tiny_patch16_224", depth=4, embed_dim=96, num_heads=4, mlp_ratio=2.0, img_size=32)
    path = vitlab.save_checkpoint(vit, tmp_path / "vit.safetensors")
    out = tmp_path / "run"
    args = ["--epochs", "1", "--lr", "1e-9", "--min-lr", "0", "--init-vit", str(path), "--out", str(out)]
    assert main([*SMALL, *args]) == 0
    ast = vitlab.load_checkpoint(out)
    # after one step at lr 1e-9 the blocks are still the ViT's; the patch filter is the mean of its RGB filters
    np.testing.assert_allclose(ast.blocks[2].mlp.fc1.weight.detach(), vit.blocks[2].mlp.fc1.weight.detach(), atol=1e-6)
    np.testing.assert_allclose(ast.patch_embed.proj.weight.detach(),
                               vit.patch_embed.proj.weight.detach().mean(1, keepdim=True), atol=1e-6)  # fmt: skip
