"""The video task: frame sampling by hand, the generated moving-shape clips, video files decoded with PyAV and frame
folders, and train / eval through the CLI as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from tests.conftest import randomise_weights
from vitlab.cli.main import main
from vitlab.data.moving import MOTIONS, moving_shapes
from vitlab.data.video import ArrayClips, SampledClips, load_video_folders, sample_indices
from vitlab.errors import DataError

av = pytest.importorskip("av")


# ----- sampling -----------------------------------------------------------------------------------------------------
def test_uniform_sampling_takes_segment_centres():
    assert sample_indices(8, 8) == list(range(8))
    assert sample_indices(8, 1) == [4]  # the middle frame: the single-frame baseline's
    assert sample_indices(10, 4) == [1, 3, 6, 8]  # floor((k + 0.5) * 10 / 4)
    assert sample_indices(3, 5) == [0, 0, 1, 2, 2]  # a short clip repeats frames: floor(0.3, 0.9, 1.5, 2.1, 2.7)


def test_random_sampling_windows():
    assert sample_indices(10, 3, "random", stride=2) == [2, 4, 6]  # evaluation: the centred window
    assert sample_indices(3, 4, "random", stride=1) == [0, 1, 2, 2]  # too short: the last frame repeats
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        idx = sample_indices(20, 4, "random", stride=3, rng=rng)
        assert np.diff(idx).tolist() == [3, 3, 3] and idx[0] >= 0 and idx[-1] < 20
        starts.add(idx[0])
    assert starts == set(range(0, 20 - 9))  # every start of a window that fits
    with pytest.raises(ValueError, match="sampling must be one of"):
        sample_indices(8, 2, "dense")


# ----- the generated moving shapes ----------------------------------------------------------------------------------
def _centroids(clips: torch.Tensor) -> torch.Tensor:
    """(N, T, 2) brightness-weighted (x, y) of each frame's shape (the background is < 40)."""
    w = (clips.float().amax(dim=2) > 100).float()  # (N, T, H, W)
    ys, xs = torch.meshgrid(torch.arange(w.shape[-2]), torch.arange(w.shape[-1]), indexing="ij")
    total = w.sum(dim=(-2, -1))
    return torch.stack([(w * xs).sum(dim=(-2, -1)) / total, (w * ys).sum(dim=(-2, -1)) / total], dim=-1)


def test_moving_shapes_labels_are_the_motion_and_the_middle_frame_says_nothing():
    clips, labels = moving_shapes(480, seed=3)
    assert clips.shape == (480, 8, 3, 16, 16) and clips.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [80] * 6
    assert torch.equal(moving_shapes(24, seed=3)[0], moving_shapes(24, seed=3)[0])
    c = _centroids(clips)
    step = (c[:, -1] - c[:, 0]) / 7  # mean motion per frame
    for k, motion in enumerate(MOTIONS):
        s = step[labels == k].mean(dim=0)
        want = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.get(motion, (0, 0))
        for axis in (0, 1):
            if want[axis]:
                assert s[axis] * want[axis] > 0.4, (motion, s)  # 0.6..0.9 pixels per frame
            else:
                assert abs(s[axis]) < 0.15, (motion, s)
    # the reference frame (index 4): the shape's position has one distribution in every class, centred on the frame
    # (pixel i spans [i, i + 1]: the centre 8 is at index 7.5); its spread is ~1.25 px, so the class means of 80
    # clips lie within ~0.14 px (one standard error) of it
    mid = c[:, 4]
    for k in range(6):
        m = mid[labels == k].mean(dim=0)
        assert (m - 7.5).abs().max() < 0.45, (MOTIONS[k], m)


# ----- folders of videos and of frames -----------------------------------------------------------------------------
def write_video(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """frames uint8 (T, H, W, 3) -> a video file (FFV1 in Matroska: lossless)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _video_tree(root: Path, clips: torch.Tensor, labels: torch.Tensor, frames: bool = False) -> Path:
    for i, (clip, label) in enumerate(zip(clips, labels, strict=True)):
        d = root / MOTIONS[int(label)]
        d.mkdir(parents=True, exist_ok=True)
        arr = clip.permute(0, 2, 3, 1).numpy()
        if frames:
            (d / f"clip{i}").mkdir()
            for t, f in enumerate(arr):
                Image.fromarray(f).save(d / f"clip{i}" / f"{t:03d}.png")
        else:
            write_video(d / f"clip{i}.mkv", arr)
    return root


def test_video_files_decode_to_their_frames(tmp_path):
    ramp = np.repeat(np.arange(12, dtype=np.uint8)[:, None, None, None] * 20, 3, axis=3)  # frame t at level 20 t
    frames = np.broadcast_to(ramp, (12, 16, 16, 3)).copy()
    d = tmp_path / "v" / "a"
    d.mkdir(parents=True)
    write_video(d / "x.mkv", frames)
    write_video(tmp_path / "v" / "b.mkv", frames[:3])  # not in a class folder: ignored
    (tmp_path / "v" / "b").mkdir()
    write_video(tmp_path / "v" / "b" / "y.mkv", frames[:5])
    train, test, classes = load_video_folders(tmp_path / "v", 0.5)
    assert classes == ["a", "b"]
    full = train.subset([0]) if train.label(0) == 0 else test.subset([0])
    assert full.frame_count(0) == 12
    clip = full.read(0, [0, 5, 5, 11])
    assert clip.shape == (4, 3, 16, 16) and clip.dtype == torch.uint8
    assert (clip.float().mean(dim=(1, 2, 3)) - torch.tensor([0.0, 100, 100, 220])).abs().max() < 2


def test_sampled_clips_from_videos_and_frame_folders_agree(tmp_path):
    clips, labels = moving_shapes(12, seed=4)
    tf = vitlab.data.ImageTransform(16, 3, (0.5,) * 3, (0.5,) * 3)
    # 3 test clips cannot hold 6 classes: split at random, as every folder data set is (stratified_split)
    train, test, _ = load_video_folders(_video_tree(tmp_path / "few", clips, labels), 0.25)
    assert (len(train), len(test)) == (9, 3)
    ref = SampledClips(ArrayClips(clips, labels, list(MOTIONS)), 4, tf)
    for frames in (False, True):
        root = _video_tree(tmp_path / f"t{frames}", clips, labels, frames)
        train, test, classes = load_video_folders(root, 0.5)
        assert classes == sorted(MOTIONS) and len(train) == len(test) == 6
        data = SampledClips(train, 4, tf)
        x, y = data[0]
        i = int(train.samples[0][0].stem.removeprefix("clip"))
        assert x.shape == (4, 3, 16, 16) and classes[y] == MOTIONS[int(labels[i])]
        torch.testing.assert_close(x, ref[i][0], atol=0.05, rtol=0)  # FFV1 in YUV 4:4:4 rounds by a level or two


def test_bad_video_data_is_one_error_naming_it(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(DataError, match="broken.mp4"):
        load_video_folders(tmp_path, 0.5)
    (tmp_path / "e" / "c").mkdir(parents=True)
    with pytest.raises(DataError, match="no videos"):
        load_video_folders(tmp_path / "e", 0.5)
    with pytest.raises(DataError, match="not a directory"):
        load_video_folders(tmp_path / "missing", 0.5)


# ----- through the CLI ----------------------------------------------------------------------------------------------
SMALL = ["train", "--task", "video", "--moving-train", "48", "--moving-val", "24", "--batch-size", "16"]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video") / "run"
    assert main([*SMALL, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_train_and_eval_a_video_model(video_run, capsys):
    report = (video_run / "report.md").read_text()
    assert "vivit_micro_patch4x2_16 on moving (video)" in report and "Confusion matrix" in report
    rows = [json.loads(line) for line in (video_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and 0 <= rows[-1]["val_acc"] <= 1
    assert main(["eval", "--checkpoint", str(video_run)]) == 0
    text = capsys.readouterr().out
    assert "24 test samples" in text and "clockwise" in text


def test_single_frame_baseline_and_inflation_through_the_cli(tmp_path):
    vit = vitlab.create_model("vit_micro_patch4_16", in_chans=3, num_classes=6)
    randomise_weights(vit)
    path = vitlab.save_checkpoint(vit, tmp_path / "vit.safetensors")
    out = tmp_path / "tsf1"
    args = ["--model", "timesformer_micro_patch4_16", "--epochs", "1", "--lr", "1e-12", "--min-lr", "0"]
    assert main([*SMALL, *args, "--frames", "1", "--pretrained", str(path), "--out", str(out)]) == 0
    model = vitlab.load_checkpoint(out)
    assert model.cfg.num_frames == 1
    # at lr 1e-12 the weights stay the inflated ones: the patch embedding is the image ViT's
    torch.testing.assert_close(model.patch_embed.proj.weight, vit.patch_embed.proj.weight)


def test_train_on_a_video_folder(tmp_path, capsys):
    clips, labels = moving_shapes(24, seed=5)
    root = _video_tree(tmp_path / "videos", clips, labels)
    out = tmp_path / "run"
    args = ["--data", f"videos:{root}", "--test-fraction", "0.5", "--sampling", "random", "--frame-stride", "1"]
    assert main(["train", "--task", "video", "--batch-size", "4", "--epochs", "1", *args, "--out", str(out)]) == 0
    final = json.loads((out / "final_metrics.json").read_text())
    assert len(final["per_class"]) == 6 and 0 <= final["top1"] <= 1
    assert main(["eval", "--checkpoint", str(out), "--data", str(root), "--test-fraction", "0.5"]) == 0
    assert "12 test samples" in capsys.readouterr().out


def test_video_task_bad_input_is_one_line(tmp_path, capsys):
    for args, message in [
        (["--sampling", "dense"], "--sampling must be one of uniform, random"),
        (["--frames", "-1"], "--frames must be >= 0"),
        (["--model", "vit_micro_patch4_8"], "--task video trains a video"),
        (["--frames", "3"], "num_frames=3 must be a multiple of tubelet_t=2"),
        (["--data", str(tmp_path / "none")], "none is not a directory"),
    ]:
        assert main([*SMALL, "--epochs", "1", "--out", str(tmp_path / "r"), *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, (args, err)
        assert not (tmp_path / "r").exists()
