"""DINO: the loss, centering, EMA and schedules by hand; the teacher gets no gradient; the head's weight norm and its
frozen first epoch; multi-crop shapes; the center all-reduced over two gloo processes; a run through the CLI."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
from torch import nn

import vitlab
from tests.conftest import make_image_folder
from vitlab.cli.main import main
from vitlab.data.multicrop import MultiCrop, MultiCropDataset, collate_multicrop
from vitlab.engine.tasks.dino import load_dino_encoder
from vitlab.losses.dino import cosine_momentum, dino_loss, ema_update_, teacher_temperature, update_center
from vitlab.methods.dino import Dino, DinoHead, DinoModel
from vitlab.weights.io import read_tensors


# ----- pure functions by hand ---------------------------------------------------------------------------------------
def test_dino_loss_by_hand_pairs_only_different_views():
    # two views, K = 2; the teacher sees both; center 0; tau_t = tau_s = 1 for readable numbers
    t = [torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])]  # q1 = (1/4, 3/4), q2 = (1/2, 1/2)
    s = [torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])]  # p1 = (1/2, 1/2), p2 = (3/4, 1/4)
    loss, stats = dino_loss(student_logits=s, teacher_logits=t, center=torch.zeros(1, 2), student_temp=1.0,
                            teacher_temp=1.0)  # fmt: skip
    ce_12 = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))  # teacher view 1 -> student view 2
    ce_21 = -(0.5 * math.log(0.5) + 0.5 * math.log(0.5))  # teacher view 2 -> student view 1
    assert loss.item() == pytest.approx((ce_12 + ce_21) / 2, abs=1e-6)
    h1, h2 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2)
    assert stats["teacher_entropy"].item() == pytest.approx((h1 + h2) / 2, abs=1e-6)
    assert stats["kl"].item() == pytest.approx((ce_12 - h1 + ce_21 - h2) / 2, abs=1e-6)  # CE = H + KL


def test_centering_and_sharpening_by_hand():
    center = torch.tensor([[1.0, -1.0]])
    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.allclose(update_center(center, logits, 0.9), torch.tensor([[0.9 + 0.2, -0.9 + 0.3]]))
    # the teacher's softmax is taken of (t - c) / tau_t: shifting t by the center changes the loss
    t = [torch.tensor([[1.0, 0.0]])] * 2
    s = [torch.tensor([[0.0, 0.0]])] * 2
    _, a = dino_loss(student_logits=s, teacher_logits=t, center=torch.zeros(1, 2), teacher_temp=0.5)
    _, b = dino_loss(student_logits=s, teacher_logits=t, center=torch.tensor([[1.0, 0.0]]), teacher_temp=0.5)
    q = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    assert a["teacher_entropy"].item() == pytest.approx(-(q * q.log()).sum().item(), abs=1e-6)
    assert b["teacher_entropy"].item() == pytest.approx(math.log(2), abs=1e-6)  # centred away: uniform


def test_momentum_and_temperature_schedules():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(25, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    assert teacher_temperature(0, 30) == pytest.approx(0.04)
    assert teacher_temperature(29, 30) == pytest.approx(0.07)
    assert teacher_temperature(10, 30) == pytest.approx(0.04 + 0.03 * 10 / 29)
    assert teacher_temperature(60, 30) == 0.07
    m = Dino()  # default warm-up: 30% of the run
    m.start_epoch(4, 10, steps_per_epoch=5)
    assert m.current_teacher_temp() == 0.07 and m.at.step == 15 and m.at.total_steps == 50
    m.start_epoch(2, 10, steps_per_epoch=5)
    assert m.current_teacher_temp() == pytest.approx(0.055)
    assert m.current_momentum() == pytest.approx(cosine_momentum(5, 50))


def test_ema_update_by_hand():
    teacher, student = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0, 2.0]]))
        teacher.bias.fill_(0.0)
        student.weight.copy_(torch.tensor([[3.0, -2.0]]))
        student.bias.fill_(1.0)
    ema_update_(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, torch.tensor([[1.2, 1.6]])) and torch.allclose(
        teacher.bias, torch.tensor([0.1])
    )


# ----- the head and the student/teacher pair ------------------------------------------------------------------------
def _tiny_dino(out_dim: int = 32) -> DinoModel:
    torch.manual_seed(0)
    enc = vitlab.create_model("vit_micro_patch4_16", num_classes=0, dynamic_img_size=True, depth=1)
    return DinoModel(enc, out_dim, hidden_dim=16, bottleneck_dim=8)


def test_head_is_weight_normalised_with_g_fixed():
    head = DinoHead(4, 5, hidden_dim=8, bottleneck_dim=3)
    assert not head.last_g.requires_grad and len(list(head.mlp)) == 5
    w = head.last_g * torch.nn.functional.normalize(head.last_v, dim=-1)
    assert torch.allclose(w.norm(dim=-1), torch.ones(5))
    x = torch.randn(2, 4)
    expected = torch.nn.functional.normalize(head.mlp(x), dim=-1) @ w.t()
    assert torch.allclose(head(x), expected) and head(x).abs().max() <= 1 + 1e-6  # cosines


def _batch(B: int = 3):
    crops = MultiCrop(16, 8, num_local=2, in_chans=1, mean=(0.5,), std=(0.5,), hflip=False)
    imgs = torch.randint(0, 256, (B, 1, 12, 12), dtype=torch.uint8)
    data = MultiCropDataset([(imgs[i], i % 2) for i in range(B)], crops)
    return collate_multicrop([data[i] for i in range(B)])


def test_teacher_gets_no_gradient_and_follows_the_student_after_the_step():
    model = _tiny_dino()
    method = Dino(freeze_last_layer=1)
    student = method.train_module(model)
    method.start_epoch(1, 2, steps_per_epoch=1)
    out = method.step(student, _batch())
    out.losses["dino"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher_net.parameters())
    assert model.student_net.backbone.patch_embed.proj.weight.grad is not None
    assert not torch.equal(model.center, torch.zeros_like(model.center))  # the center moved
    before = {k: v.clone() for k, v in model.teacher_net.state_dict().items()}
    last_v = model.student_net.head.last_v.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.04)
    method.before_optimizer_step(model)  # epoch 1: the last layer's gradient is dropped
    assert model.student_net.head.last_v.grad is None
    opt.step()
    assert torch.equal(model.student_net.head.last_v, last_v)  # not updated, not even decayed
    assert all(torch.equal(v, model.teacher_net.state_dict()[k]) for k, v in before.items())  # optimizer: student only
    m = method.current_momentum()
    method.after_optimizer_step(model)
    s = dict(model.student_net.named_parameters())
    for k, t in model.teacher_net.named_parameters():
        assert torch.allclose(t, m * before[k] + (1 - m) * s[k], atol=1e-6), k
    method.start_epoch(2, 2, steps_per_epoch=1)
    method.step(student, _batch()).losses["dino"].backward()
    method.before_optimizer_step(model)  # epoch 2: the last layer trains
    assert model.student_net.head.last_v.grad is not None


def test_multicrop_shapes_ranges_and_collate():
    batch = _batch(B=4)
    assert [tuple(c.shape) for c in batch.crops] == [(4, 1, 16, 16)] * 2 + [(4, 1, 8, 8)] * 2
    assert all(c.min() >= -1 - 1e-6 and c.max() <= 1 + 1e-6 for c in batch.crops)  # normalised [0, 1] by 0.5
    rgb = MultiCrop(32, 16, num_local=3)(torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8), torch.Generator())
    assert [tuple(v.shape) for v in rgb] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    a = MultiCrop(32, 16, num_local=1)(torch.full((3, 20, 20), 7, dtype=torch.uint8), torch.Generator().manual_seed(1))
    b = MultiCrop(32, 16, num_local=1)(torch.full((3, 20, 20), 7, dtype=torch.uint8), torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # one generator, one set of views
    with pytest.raises(ValueError, match="global_scale"):
        MultiCrop(32, 16, global_scale=(0.5, 0.4))


# ----- DDP: the center is the mean over every rank's teacher outputs ------------------------------------------------
LOGITS = torch.arange(24, dtype=torch.float32).reshape(6, 4) ** 1.5


def _center_worker(rank, world, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        local = LOGITS[:2] if rank == 0 else LOGITS[2:]  # unequal halves: the mean is over rows, not ranks
        out[rank] = update_center(torch.ones(1, 4), local, 0.9).tolist()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~10 s of start-up on 2 cores
def test_center_under_ddp_equals_one_process_with_the_whole_batch():
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_center_worker, args=(2, port, out), nprocs=2)
    expected = update_center(torch.ones(1, 4), LOGITS, 0.9)
    for rank in (0, 1):
        assert torch.allclose(torch.tensor(out[rank]), expected, atol=1e-5)


# ----- through the CLI ----------------------------------------------------------------------------------------------
def test_train_task_dino_writes_knn_and_the_collapse_monitor(tmp_path, capsys):
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=8, size=16)
    make_image_folder(data / "val", per_class=3, size=16)
    out = tmp_path / "run"
    args = ["train", "--task", "dino", "--data", str(data), "--epochs", "2", "--batch-size", "8", "--out",
            str(out), "--out-dim", "64", "--hidden-dim", "32", "--local-crops", "2"]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "train_teacher_entropy", "train_kl", "val_knn_acc"} <= set(rows[0])
    assert 0 < rows[-1]["train_teacher_entropy"] <= math.log(64) + 1e-4
    assert (out / "collapse.png").is_file() and "Collapse monitor" in (out / "report.md").read_text()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["weight_decay"] == 0.04 and cfg["task_cfg"]["local_crops"] == 2
    # the run's teacher drawn by explain dino-attention (any image: the encoder's channels and size are matched)
    img = (
        tmp_path / "data" / "train" / "cat" / sorted(p.name for p in (tmp_path / "data" / "train" / "cat").iterdir())[0]
    )
    assert main(["explain", "dino-attention", "--checkpoint", str(out), str(img), "--out", str(tmp_path / "att")]) == 0
    result = json.loads((tmp_path / "att" / "dino_attention.json").read_text())
    assert result["model"] == "vit_micro_patch4_16" and result["grid"] == [4, 4] and len(result["heads"]) == 4
    # the run reads as its teacher encoder: load_checkpoint, fine-tuning (--pretrained) and vitlab eval's k-NN
    teacher = vitlab.load_checkpoint(out)
    student = load_dino_encoder(str(out), "student")
    assert teacher.model_name == student.model_name == "vit_micro_patch4_16" and teacher.num_classes == 0
    saved = read_tensors(out / "checkpoint.safetensors")[0]
    assert torch.equal(teacher.patch_embed.proj.weight, saved["teacher_net.backbone.patch_embed.proj.weight"])
    assert not torch.equal(teacher.patch_embed.proj.weight, student.patch_embed.proj.weight)  # EMA lags the student
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(data)]) == 0
    assert f"k-NN top-1 (teacher, k=20) {rows[-1]['val_knn_acc']:.4f}" in capsys.readouterr().out


def test_dino_task_bad_flags_are_one_line(tmp_path, capsys):
    assert main(["train", "--task", "dino", "--out", str(tmp_path / "r"), "--teacher-temp", "0"]) == 2
    assert "--teacher-temp must be > 0" in capsys.readouterr().err
    assert main(["train", "--task", "dino", "--out", str(tmp_path / "r"), "--fsdp"]) == 2
    assert "--fsdp is not supported by --task dino" in capsys.readouterr().err
    assert main(["train", "--task", "dino", "--out", str(tmp_path / "r"), "--model", "swin_tiny_patch4_window7_224",
                 "--img-size", "32"]) == 2  # fmt: skip
    assert "local crops smaller than the global ones" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # three short runs
def test_resumed_dino_run_equals_an_uninterrupted_one(tmp_path):
    """The teacher, the center and the schedules (derived from the epoch) continue exactly across --resume."""
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=4, size=16)
    make_image_folder(data / "val", per_class=2, size=16)
    base = ["train", "--task", "dino", "--data", str(data), "--epochs", "2", "--batch-size", "4", "--out-dim", "32",
            "--hidden-dim", "16", "--local-crops", "1"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--stop-after", "1"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--resume"]) == 0
    a = read_tensors(tmp_path / "a" / "checkpoint.safetensors")[0]
    b = read_tensors(tmp_path / "b" / "checkpoint.safetensors")[0]
    assert a.keys() == b.keys() and "center" in a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
