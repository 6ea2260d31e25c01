"""Every bad flag, data file and checkpoint ends in one line naming it, exit code 2, and nothing written (issue #10).

Each CLI case asserts: exit code 2, exactly one stderr line `vitlab CMD: error: ...` that names the flag or file, and
no file under tmp_path created, changed or removed.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from tests.conftest import make_image_folder
from vitlab.cli.main import main
from vitlab.data.datasets import read_image, to_uint8
from vitlab.engine.report import read_metrics
from vitlab.errors import CheckpointError, ConfigError, DataError
from vitlab.weights import write_checkpoint


def snapshot(root: Path) -> dict:
    """Every file's mtime and size, but the run lock's: a refused --resume takes the lock (its content is the pid of
    the last holder) before it reads the damaged state."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.name != ".lock"
    }


def refused(capsys, root: Path, *args, names: str) -> str:
    """Run the CLI, assert it refused with one line naming `names` and wrote nothing under `root`; the line."""
    before = snapshot(root)
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip() and not ln.startswith("eval:")]  # tqdm's bar
    assert rc == 2, (rc, cap.err)
    assert len(lines) == 1 and lines[0].startswith(f"vitlab {args[0]}: error: "), lines
    assert names in lines[0], lines[0]
    assert "Traceback" not in cap.err
    assert snapshot(root) == before
    return lines[0]


def micro_checkpoint(path: Path, **kw) -> Path:
    return vitlab.save_checkpoint(vitlab.create_model("vit_micro_patch4_8", **kw), path)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A run stopped after epoch 1 of 2: config.json, state.json, metrics.jsonl, checkpoints."""
    out = tmp_path_factory.mktemp("bad") / "run"
    args = ["train", "--epochs", "2", "--stop-after", "1", "--batch-size", "256", "--warmup-epochs", "0"]
    assert main([*args, "--out", str(out)]) == 0
    return out


# ----- 1. flags checked up front -------------------------------------------------------------------------------------
TRAIN_FLAGS = [
    (["--workers", "-1"], "--workers"),
    (["--img-size", "0"], "--img-size"),
    (["--img-size", "-8"], "--img-size"),
    (["--label-smoothing", "1.5"], "--label-smoothing"),
    (["--label-smoothing", "-0.5"], "--label-smoothing"),
    (["--mixup", "-1"], "--mixup"),
    (["--cutmix", "-1"], "--cutmix"),
    (["--mixup", "nan"], "--mixup"),
    (["--drop-path", "5"], "--drop-path"),
    (["--drop-path", "1"], "--drop-path"),
    (["--ema-decay", "5"], "--ema-decay"),
    (["--warmup-epochs", "-5"], "--warmup-epochs"),
    (["--min-lr", "1"], "--min-lr"),
    (["--min-lr=-1e-5"], "--min-lr"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--lr", "nan"], "--lr"),
    (["--stop-after", "0"], "--stop-after"),
    (["--freeze-backbone", "--unfreeze-epoch", "0"], "--unfreeze-epoch"),
    (["--seed", "-1"], "--seed"),
    (["--clip-grad", "-1"], "--clip-grad"),
    (["--batch-size", "0"], "--batch-size"),
    (["--test-fraction", "5"], "--test-fraction"),
    (["--task", "distillation", "--teacher", "t", "--alpha", "2"], "--alpha"),
    (["--task", "distillation", "--teacher", "t", "--tau", "0"], "--tau"),
    (["--task", "multilabel", "--threshold", "1"], "--threshold"),
]


@pytest.mark.parametrize("flags,name", TRAIN_FLAGS, ids=[" ".join(f) for f, _ in TRAIN_FLAGS])
def test_train_flag_out_of_range(flags, name, tmp_path, capsys):
    refused(capsys, tmp_path, "train", "--epochs", "1", *flags, "--out", tmp_path / "o", names=name)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args,name",
    [
        (["eval", "--batch-size", "0"], "--batch-size"),
        (["eval", "--test-fraction", "5"], "--test-fraction"),
        (["predict", "x.png", "--topk", "0"], "--topk"),
        (["predict", "x.png", "--topk", "-1"], "--topk"),
        (["predict", "x.png", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_eval_and_predict_flags(args, name, tmp_path, capsys):
    refused(capsys, tmp_path, *args, "--checkpoint", tmp_path / "absent", names=name)


@pytest.mark.parametrize(
    "args,name",
    [
        (["models", "vit_micro*", "--img-size", "0"], "--img-size"),
        (["bench", "--models", "vit_micro_patch4_8", "--batch-size", "0"], "--batch-size"),
        (["scaling", "--dim", "10", "--heads", "3", "--out", "s"], "--dim"),
    ],
)
def test_other_commands_flags(args, name, tmp_path, capsys):
    refused(capsys, tmp_path, *args, names=name)


# ----- 2. data validated before the run directory exists ------------------------------------------------------------
def train_on(capsys, tmp_path, data, names: str) -> str:
    line = refused(capsys, tmp_path, "train", "--epochs", "1", "--data", data, "--out", tmp_path / "o", names=names)
    assert not (tmp_path / "o").exists()
    return line


def test_truncated_jpeg_is_named(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", per_class=3)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=95)
    raw = (tmp_path / "full.jpg").read_bytes()
    (data / "dog" / "cut.jpg").write_bytes(raw[: len(raw) // 2])  # header intact: verify() would pass it
    (tmp_path / "full.jpg").unlink()
    train_on(capsys, tmp_path, data, "cut.jpg")


def test_decompression_bomb_is_named(tmp_path, capsys, monkeypatch):
    data = make_image_folder(tmp_path / "imgs", per_class=3)
    Image.new("L", (40, 40)).save(data / "cat" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: PIL warns (above 2x: its error)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning must not leak to stderr
        line = train_on(capsys, tmp_path, data, "bomb.png")
    assert "decompression bomb" in line.lower()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    train_on(capsys, tmp_path, data, "bomb.png")


def test_data_naming_a_file(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"x")
    assert "is a file" in train_on(capsys, tmp_path, tmp_path / "a.png", "a.png")
    assert "is a file" in train_on(capsys, tmp_path, f"mnist:{tmp_path / 'a.png'}", "a.png")


def test_one_class_is_refused(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", classes=("cat",), per_class=4)
    assert "needs at least 2 classes" in train_on(capsys, tmp_path, data, str(data))


def _cifar10(root: Path, data=None, labels=None) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = [f"c{i}" for i in range(10)]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        if name == "data_batch_3":
            batch = {"data": batch["data"] if data is None else data, "labels": labels or batch["labels"]}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f)
    return root


@pytest.mark.parametrize(
    "data,labels,expect",
    [
        (None, [0, 1, 12, 3], "label 12"),
        (None, [0, -1, 2, 3], "label -1"),
        (np.zeros((4, 3000), np.uint8), None, "(N, 3072)"),
        (None, [0, 1, 2], "4 images but 3 labels"),
    ],
)
def test_cifar_bad_batch_is_named(data, labels, expect, tmp_path, capsys):
    root = _cifar10(tmp_path / "c", data, labels)
    line = train_on(capsys, tmp_path, f"cifar10:{root}", "data_batch_3")
    assert expect in line


def _mnist(root: Path, n_img=6, n_lab=6, labels=None, corrupt=None) -> Path:
    root.mkdir()
    for prefix in ("train", "t10k"):
        x = np.zeros((n_img, 28, 28), np.uint8)
        y = np.array(labels if labels is not None else [i % 10 for i in range(n_lab)], np.uint8)
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + np.array(x.shape, ">i4").tobytes()
                                                           + x.tobytes())  # fmt: skip
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(bytes([0, 0, 8, 1]) + np.array(y.shape, ">i4").tobytes() + y.tobytes())
        )
    if corrupt:
        (root / "train-labels-idx1-ubyte.gz").write_bytes(corrupt)
    return root


@pytest.mark.parametrize(
    "kw,expect",
    [
        (dict(labels=[0, 1, 2, 3, 4, 10]), "label 10"),
        (dict(n_lab=5), "6 images"),
        (dict(corrupt=b"\x1f\x8b\x08\x00garbage"), "cannot read MNIST file"),
        (dict(corrupt=gzip.compress(b"\x00" * 64)[:20]), "cannot read MNIST file"),
    ],
)
def test_mnist_bad_files_are_named(kw, expect, tmp_path, capsys):
    root = _mnist(tmp_path / "m", **kw)
    assert expect in train_on(capsys, tmp_path, f"mnist:{root}", "train-")


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"])
def test_every_pil_mode_gives_a_sensible_uint8_image(mode, tmp_path):
    ramp = np.linspace(0, 1, 16)[None].repeat(4, axis=0)  # (4, 16): dark to bright, left to right
    if mode == "I;16":
        im = Image.fromarray((ramp * 65535).astype(np.uint16))
    elif mode == "I":
        im = Image.fromarray((ramp * 65535).astype(np.int32))  # 16-bit levels held in 32-bit integers
    elif mode == "F":
        im = Image.fromarray((ramp * 1000 - 200).astype(np.float32))  # any range: stretched
    else:
        im = Image.fromarray((ramp * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I;16", "I", "F", "CMYK") else "x.png")
    im.save(path)
    x = read_image(path)
    assert x.dtype == torch.uint8 and x.shape[0] in (1, 3) and x.shape[1:] == (4, 16)
    row = x[0, 0].int()
    assert row[0] <= 10 and row[-1] >= 245, row  # black stays black, white white: not clipped at 255
    if mode not in ("1",):
        assert (row[1:] >= row[:-1]).all() and row[8] > 60 and row[8] < 195  # a ramp, not a step


def test_sixteen_bit_is_scaled_not_clipped():
    im = Image.fromarray(np.array([[0, 257, 32896, 65535]], np.uint16))
    assert to_uint8(im).tolist() == [[0, 1, 128, 255]]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))  # a [0, 1] float image
    assert to_uint8(f).tolist() == [[0, 128, 255]]


def test_float_image_with_nan_is_named(tmp_path):
    Image.fromarray(np.array([[0.0, np.nan]], np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="nan.tif.*NaN"):
        read_image(tmp_path / "nan.tif")


# ----- 3. the API validates too --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw", [dict(num_classes=-1), dict(img_size=0), dict(img_size=-4), dict(depth=-1), dict(patch_size=0)]
)
def test_create_model_refuses_nonsense_sizes(kw):
    name = next(iter(kw))
    with pytest.raises(ConfigError, match=name):
        vitlab.create_model("vit_micro_patch4_8", **kw)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("swin_micro_patch4_window4_32", dict(depths=(0, 1, 1, 1))),
        ("mixer_micro_patch4_32", dict(depth=0)),
        ("convnext_micro_32", dict(patch_size=0)),
        ("resnet18", dict(layers=(2, 0, 2, 2))),
    ],
)
def test_family_depth_and_patch_fields(name, kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        vitlab.create_model(name, **kw)


@pytest.mark.parametrize(
    "x,expect",
    [
        (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "uint8"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.float64), "float64"),
        (np.zeros((1, 1, 8, 8), np.float32), "ndarray"),
    ],
    ids=["uint8", "float64", "numpy"],
)
def test_forward_refuses_wrong_input_types(x, expect):
    model = vitlab.create_model("vit_micro_patch4_8").eval()
    with pytest.raises(TypeError, match=expect):
        model(x)
    with pytest.raises(TypeError, match=expect):
        model.forward_intermediates(x)


# ----- 4. damaged run files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "damage,expect",
    [
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), "expected a JSON object"),
        (lambda d: _edit_json(d / "config.json", bogus=1), "unknown field(s) bogus"),
        (lambda d: _edit_json(d / "config.json", task_cfg={"label_smoothing": 0.1, "bogus": 2}), "bogus"),
        (lambda d: _edit_json(d / "config.json", lr=-1), "--lr"),
        (lambda d: _edit_json(d / "state.json", epoch=None, drop="epoch"), "state.json lacks epoch"),
    ],
    ids=["config-corrupt", "config-list", "config-unknown", "task-cfg-unknown", "config-bad-value", "state-no-epoch"],
)
def test_damaged_run_files_on_resume(damage, expect, digits_run, tmp_path, capsys):
    run = copy_run(digits_run, tmp_path / "run")
    damage(run)
    line = refused(capsys, tmp_path, "train", "--resume", "--out", run, names="json")
    assert expect in line


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run directory whose config.json names the copy (a resume writes to the saved --out)."""
    shutil.copytree(src, dst)
    _edit_json(dst / "config.json", out=str(dst))
    return dst


def _edit_json(path: Path, drop: str | None = None, **changes) -> None:
    d = json.loads(path.read_text())
    d.update({k: v for k, v in changes.items() if k != drop})
    d.pop(drop, None)
    path.write_text(json.dumps(d))


def test_torn_last_metrics_line_is_tolerated(digits_run, tmp_path, capsys):
    run = copy_run(digits_run, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # a crash mid-append
    assert [m["epoch"] for m in read_metrics(run / "metrics.jsonl")] == [1]
    assert main(["train", "--resume", "--out", str(run)]) == 0
    assert [m["epoch"] for m in read_metrics(run / "metrics.jsonl")] == [1, 2]
    capsys.readouterr()


def test_torn_middle_metrics_line_is_named(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(CheckpointError, match="metrics.jsonl: line 2"):
        read_metrics(tmp_path / "metrics.jsonl")


def test_eval_of_run_without_checkpoint(digits_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(digits_run / "config.json", run)
    refused(capsys, tmp_path, "eval", "--checkpoint", run, names="without checkpoint.safetensors")


# ----- 5. hostile and odd files --------------------------------------------------------------------------------------
def test_pickle_with_code_is_refused_without_torchs_advice(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump(Evil(), f)
    line = refused(capsys, tmp_path, "eval", "--checkpoint", tmp_path / "evil.pth", "--model", "vit_micro_patch4_8",
                   names="evil.pth")  # fmt: skip
    assert "could execute code" in line and "weights_only" not in line


def test_random_bytes_are_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "rand.pth").write_bytes(np.random.default_rng(0).bytes(300).replace(b"\x80", b"\x00"))
    line = refused(capsys, tmp_path, "eval", "--checkpoint", tmp_path / "rand.pth", "--model", "vit_micro_patch4_8",
                   names="rand.pth")  # fmt: skip
    assert "not a checkpoint (not a PyTorch or safetensors file)" in line and "execute" not in line


def test_missing_checkpoint_says_missing(tmp_path, capsys):
    for extra in ([], ["--model", "vit_micro_patch4_8"]):
        line = refused(capsys, tmp_path, "eval", "--checkpoint", tmp_path / "gone.pth", *extra, names="gone.pth")
        assert "missing" in line


def test_metadata_bomb_is_refused_before_building(tmp_path, capsys, monkeypatch):
    small = vitlab.create_model("vit_micro_patch4_8")
    config = {**dataclasses.asdict(small.cfg), "embed_dim": 16384, "depth": 48}
    path = write_checkpoint(tmp_path / "bomb.safetensors", small.state_dict(), "vit_micro_patch4_8", config)
    from vitlab import factory

    real = factory.build_model

    def meta_only(entry, kwargs):  # 600 GB of weights: building them for real would take the machine down
        assert torch.empty(0).device.type == "meta", "the model was built before the checkpoint was checked"
        return real(entry, kwargs)

    monkeypatch.setattr(factory, "build_model", meta_only)
    line = refused(capsys, tmp_path, "eval", "--checkpoint", path, names="bomb.safetensors")
    assert "does not fit" in line and "the file holds" in line


def test_checkpoint_labels_are_sanitised(tmp_path, capsys):
    labels = ["\x1b]0;pwned\x07cat", "dog\nforged line"]
    ckpt = micro_checkpoint(tmp_path / "m.safetensors", num_classes=2, labels=labels)
    Image.new("L", (8, 8), 128).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--no-optimize"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and len(out.splitlines()) == 3
    assert "?]0;pwned?cat" in out and "dog?forged line" in out


# ----- 6. eval and distillation that do not fit the data ------------------------------------------------------------
def test_eval_refuses_other_class_names(tmp_path, capsys):
    data = make_image_folder(tmp_path / "dogfox", classes=("dog", "fox"), per_class=3)
    ckpt = micro_checkpoint(tmp_path / "m.safetensors", num_classes=2, labels=["cat", "dog"])
    line = refused(capsys, tmp_path, "eval", "--checkpoint", ckpt, "--data", data, names="dog, fox")
    assert "cat, dog" in line


def test_eval_says_nan(tmp_path, capsys):
    data = make_image_folder(tmp_path / "catdog", per_class=3)
    model = vitlab.create_model("vit_micro_patch4_8", num_classes=2, labels=["cat", "dog"])
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    ckpt = vitlab.save_checkpoint(model, tmp_path / "nan.safetensors")
    line = refused(capsys, tmp_path, "eval", "--checkpoint", ckpt, "--data", data, names="head.weight")
    assert "outputs NaN" in line
    with torch.no_grad():
        model.head.weight.fill_(3e38)  # finite weights whose logits overflow
        model.head.bias.fill_(3e38)
    ckpt = vitlab.save_checkpoint(model, tmp_path / "huge.safetensors")
    refused(capsys, tmp_path, "eval", "--checkpoint", ckpt, "--data", data, names="the model outputs NaN")


def test_teacher_with_another_class_count_is_refused(tmp_path, capsys):
    from safetensors.torch import save_file

    teacher = vitlab.create_model("vit_micro_patch4_8", num_classes=2)
    save_file(teacher.state_dict(), tmp_path / "teacher.safetensors")  # a bare state dict: no class count said
    line = refused(capsys, tmp_path, "train", "--task", "distillation", "--teacher", tmp_path / "teacher.safetensors",
                   "--teacher-model", "vit_micro_patch4_8", "--epochs", "1", "--out", tmp_path / "o",
                   names="teacher.safetensors")  # fmt: skip
    assert "10 classes" in line and not (tmp_path / "o").exists()
    named = micro_checkpoint(tmp_path / "named.safetensors", num_classes=2)
    refused(capsys, tmp_path, "train", "--task", "distillation", "--teacher", named, "--epochs", "1",
            "--out", tmp_path / "o", names="predicts 2 classes")  # fmt: skip


CHANGED_ON_RESUME = [
    (["--lr", "0.1"], "--lr 0.1 (run: 0.002)"),
    (["--epochs", "5"], "--epochs 5 (run: 2)"),
    (["--model", "cpvt_micro_patch4_8"], "--model cpvt_micro_patch4_8"),
    (["--data", "cifar10:/nowhere"], "--data cifar10:/nowhere (run: digits)"),
    (["--label-smoothing", "0.3"], "--label-smoothing 0.3"),  # a task flag
]


@pytest.mark.parametrize("flags,named", CHANGED_ON_RESUME, ids=[f[0][0] for f in CHANGED_ON_RESUME])
def test_resume_refuses_changed_flags(flags, named, digits_run, tmp_path, capsys):
    run = copy_run(digits_run, tmp_path / "run")
    refused(capsys, tmp_path, "train", "--resume", "--out", run, *flags, names=named)


def test_resume_takes_the_saved_values_and_a_copy_resumes_where_it_is(digits_run, tmp_path, capsys):
    """Flags equal to the run's pass; a copied directory (config.json still naming the original) continues itself."""
    run = tmp_path / "copy"
    shutil.copytree(digits_run, run)
    before = snapshot(digits_run)
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--batch-size", "256"]) == 0
    assert [m["epoch"] for m in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert snapshot(digits_run) == before  # the original is not written to
    capsys.readouterr()


def test_divergence_is_one_line_and_keeps_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--epochs", "1", "--batch-size", "256", "--warmup-epochs", "0", "--clip-grad", "0", "--out", out]
    assert main(["train", "--lr", "1e30", *map(str, args)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "training diverged" in lines[0] and "no epoch completed" in lines[0], lines
    assert main(["train", *map(str, args)]) == 0  # the same command with a sane --lr starts the run afresh
    capsys.readouterr()


# ----- 7. predict streams ------------------------------------------------------------------------------------------
def test_predict_streams_in_batches_and_checks_every_file_first(tmp_path, capsys, monkeypatch):
    ckpt = micro_checkpoint(tmp_path / "m.safetensors", num_classes=3)
    paths = []
    for i in range(5):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    sizes = []
    real_forward = vitlab.models.base.ModelBase.forward

    def spy(self, x):
        sizes.append(len(x))
        return real_forward(self, x)

    monkeypatch.setattr(vitlab.models.base.ModelBase, "forward", spy)
    assert (
        main(["predict", *paths, "--checkpoint", str(ckpt), "--batch-size", "2", "--no-optimize", "--topk", "1"]) == 0
    )
    assert sizes == [2, 2, 1]
    assert len(capsys.readouterr().out.splitlines()) == 10
    (tmp_path / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    before = snapshot(tmp_path)
    assert main(["predict", *paths, "--checkpoint", str(ckpt)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "3.png" in cap.err and len(cap.err.splitlines()) == 1
    assert snapshot(tmp_path) == before
