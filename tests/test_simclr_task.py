"""SimCLR and SupCon tasks: the projection head in the classifier's place, the methods' losses, a run on digits
evaluated every N epochs with k-NN and the linear probe, resume, and `vitlab eval --knn / --linear-probe` on
self-supervised and classification checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from vitlab.cli.main import main
from vitlab.data import load_data
from vitlab.data.batches import MultiViewBatch
from vitlab.engine.tasks import get_task
from vitlab.errors import ConfigError
from vitlab.factory import create_model, load_checkpoint, save_checkpoint
from vitlab.losses.selfsup import nt_xent_loss, supcon_loss, triplet_batch_hard_loss
from vitlab.methods.simclr import ProjectionHead, SimCLR, SupervisedContrastive, attach_projection_head

MODEL = "vit_micro_patch4_8"


def test_projection_head_takes_the_classifiers_place():
    m = create_model(MODEL, num_classes=0)
    head = attach_projection_head(m, out_dim=16, hidden_dim=32)
    assert isinstance(m.head, ProjectionHead) and m.head is head
    x = torch.randn(3, 1, 8, 8)
    h = m.forward_head(m.forward_features(x), pre_logits=True)  # the representation, before the projection
    assert h.shape == (3, 64) and m(x).shape == (3, 16)
    assert torch.allclose(m(x), head(h), atol=1e-6)
    with pytest.raises(ConfigError, match="2 classifiers"):
        attach_projection_head(create_model("deit_micro_distilled_patch4_8", num_classes=0), 16)
    with pytest.raises(ConfigError, match="num_classes=0"):
        attach_projection_head(create_model(MODEL), 16)


def _batch(B=6):
    torch.manual_seed(0)
    return MultiViewBatch([torch.randn(B, 1, 8, 8), torch.randn(B, 1, 8, 8)], torch.tensor([0, 1, 2] * (B // 3)))


def test_methods_compute_their_loss_on_the_projections():
    m = create_model(MODEL, num_classes=0)
    attach_projection_head(m, 16)
    batch = _batch()
    z1, z2 = m(batch.views[0]), m(batch.views[1])
    out = SimCLR(temperature=0.5).step(m, batch)
    assert out.losses["loss_nt_xent"].item() == pytest.approx(nt_xent_loss(z1=z1, z2=z2).item(), abs=1e-5)
    out.losses["loss_nt_xent"].backward()
    assert m.patch_embed.proj.weight.grad.abs().sum() > 0  # the encoder learns, not only the head
    y = torch.cat([batch.labels, batch.labels])
    sup = SupervisedContrastive("supcon", temperature=0.1).step(m, batch).losses["loss_supcon"]
    z = torch.cat([z1, z2])
    assert sup.item() == pytest.approx(supcon_loss(embeds=z, labels=y, temperature=0.1).item(), abs=1e-5)
    tri = SupervisedContrastive("triplet", margin=0.3).step(m, batch).losses["loss_triplet"]
    ref = triplet_batch_hard_loss(embeds=torch.nn.functional.normalize(z, dim=-1), labels=y, margin=0.3)
    assert tri.item() == pytest.approx(ref.item(), abs=1e-5)
    with pytest.raises(ValueError, match="labelled"):
        SupervisedContrastive().step(m, MultiViewBatch(batch.views, None))


def test_task_data_path_gives_two_views_and_a_bank():
    task = get_task("simclr")
    tcfg = task.config_cls()
    splits = load_data("digits")
    m = create_model(MODEL, num_classes=0)
    task.prepare_model(m, tcfg)
    train, test = task.datasets(splits, m, True, tcfg)
    batch = task.collate([train[i] for i in range(4)])
    assert isinstance(batch, MultiViewBatch) and len(batch.views) == 2 and batch.views[0].shape == (4, 1, 8, 8)
    assert not torch.equal(batch.views[0], batch.views[1])  # two random views of each image
    assert len(test) == len(splits.train) + len(splits.test)
    fb = task.collate([test[0], test[len(splits.train)]])
    assert fb.bank.tolist() == [True, False]
    with pytest.raises(ConfigError, match="--temperature"):
        task.config_cls(temperature=0.0)
    with pytest.raises(ConfigError, match="--loss"):
        get_task("supcon").config_cls(loss="hinge")


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("simclr") / "run"
    args = ["train", "--task", "simclr", "--model", MODEL, "--data", "digits", "--epochs", "3", "--eval-every", "2",
            "--batch-size", "128", "--out", str(out)]  # fmt: skip
    assert main([*args, "--stop-after", "1"]) == 0
    assert main([*args, "--resume"]) == 0  # the projection head is rebuilt before the saved weights load
    return out


@pytest.mark.slow
def test_simclr_run_evaluates_every_n_epochs(simclr_run):
    rows = [json.loads(line) for line in (simclr_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert "val_knn_top1" not in rows[0]  # --eval-every 2: epoch 1 is not evaluated; 2 is, and the last always
    for r in rows[1:]:
        assert 0.1 < r["val_knn_top1"] <= 1 and 0.1 < r["val_probe_top1"] <= 1
    report = (simclr_run / "report.md").read_text()
    assert "k-NN top-1" in report and "linear-probe top-1" in report and (simclr_run / "curves.png").is_file()
    # loaded as an encoder, the projection head is dropped (it is not part of the representation)
    enc = load_checkpoint(simclr_run)
    assert enc.num_classes == 0 and isinstance(enc.head, torch.nn.Identity)


@pytest.mark.slow
def test_eval_knn_and_probe_on_self_supervised_and_classifier_checkpoints(simclr_run, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(simclr_run), "--knn", "--linear-probe", "--data", "digits"]) == 0
    text = capsys.readouterr().out
    last = json.loads((simclr_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"k-NN top-1 {last['val_knn_top1']:.4f}" in text  # the same figure as the run's last evaluation
    assert f"linear-probe top-1 {last['val_probe_top1']:.4f}" in text
    assert main(["eval", "--checkpoint", str(simclr_run)]) == 0  # the task's own evaluator: k-NN and probe
    assert "k-NN top-1" in capsys.readouterr().out
    ckpt = save_checkpoint(create_model(MODEL), tmp_path / "classifier.safetensors")  # a 10-class classifier
    assert main(["eval", "--checkpoint", str(ckpt), "--knn", "--data", "digits", "--knn-k", "5"]) == 0
    text = capsys.readouterr().out
    assert "k-NN top-1" in text and "(k=5," in text and "linear-probe" not in text
    assert main(["eval", "--checkpoint", str(ckpt), "--knn", "--knn-temperature", "0"]) == 2


def test_eval_every_must_be_positive():
    from vitlab.engine.config import TrainConfig

    with pytest.raises(ConfigError, match="--eval-every must be >= 1"):
        TrainConfig(eval_every=0)
