"""Detection end to end: the shapes set, COCO loading (and its bad input), pycocotools AP on hand-made cases,
the detection task through `vitlab train / eval / detect / data shapes`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_cli import run_cli
from vitlab.cli.main import main
from vitlab.data.batches import collate_detection
from vitlab.data.coco import DetectionTransform, crop_box, in_memory, load_coco
from vitlab.data.shapes import SHAPE_CLASSES, ShapesConfig, render_image, shapes_coco, write_shapes
from vitlab.engine.evaluators.detection import DetectionEvaluator, coco_evaluate, postprocess
from vitlab.errors import DataError
from vitlab.models.detr import DetrOutput

# ----- the shapes set ---------------------------------------------------------------------------------------------


def test_shapes_are_deterministic_and_annotated_inside_the_image():
    a, pa = shapes_coco(30, seed=3)
    b, pb = shapes_coco(30, seed=3)
    assert a == b and all(np.array_equal(x, y) for x, y in zip(pa, pb, strict=True))
    assert [c["name"] for c in a["categories"]] == list(SHAPE_CLASSES)
    per_image = {}
    for ann in a["annotations"]:
        im = a["images"][ann["image_id"] - 1]
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= im["width"] and y + h <= im["height"]
        assert 0 < ann["area"] <= w * h
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    assert set(per_image) == {im["id"] for im in a["images"]}  # every image has an object
    assert min(per_image.values()) >= 1 and max(per_image.values()) <= 8
    sizes = {(im["height"], im["width"]) for im in a["images"]}
    assert len(sizes) > 5  # images of many sizes: padding masks get exercised


def test_every_object_keeps_half_of_its_pixels_visible():
    rng = np.random.default_rng(0)
    cfg = ShapesConfig(min_objects=8, max_objects=8)
    for _ in range(10):
        img, objects = render_image(rng, cfg)
        for obj in objects:
            x, y, w, h = obj["bbox"]
            # the visible pixels fill a good part of their tight box (a shape, not a sliver)
            assert obj["area"] >= 0.2 * w * h


# ----- COCO files -------------------------------------------------------------------------------------------------


def _coco_dir(tmp_path: Path, n_train=6, n_val=4) -> Path:
    root = tmp_path / "coco"
    write_shapes(root, n_train, n_val, seed=5)
    return root


def _rewrite(root: Path, split: str, edit) -> None:
    path = root / "annotations" / f"instances_{split}.json"
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))


def test_category_ids_need_not_be_contiguous_and_crowds_are_not_targets(tmp_path):
    root = _coco_dir(tmp_path)
    remap = {1: 7, 2: 3, 3: 42, 4: 11}  # ids out of order and with gaps; names from the JSON

    def edit(coco):
        for c in coco["categories"]:
            c["id"] = remap[c["id"]]
        for a in coco["annotations"]:
            a["category_id"] = remap[a["category_id"]]
        coco["annotations"][0]["iscrowd"] = 1

    for split in ("train", "val"):
        _rewrite(root, split, edit)
    train, val = load_coco(root)
    assert train.classes == ["square", "circle", "cross", "triangle"]  # sorted by id: 3, 7, 11, 42
    assert train.categories.ids == (3, 7, 11, 42)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    first = coco["annotations"][0]
    img, target = train[0]
    n_anns = sum(a["image_id"] == first["image_id"] for a in coco["annotations"])
    assert len(target["boxes"]) == n_anns - 1  # the crowd is left out of the targets
    second = next(a for a in coco["annotations"][1:] if a["image_id"] == first["image_id"])
    x, y, w, h = second["bbox"]
    assert [x, y, x + w, y + h] in target["boxes"].tolist()
    assert train.categories.index()[second["category_id"]] in target["labels"].tolist()
    assert img.dtype == torch.uint8 and img.shape[0] == 3


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("categories"), "missing key 'categories'"),
        (lambda c: c["annotations"][0].update(image_id=999), "image_id 999 is not among the images"),
        (lambda c: c["annotations"][0].update(category_id=77), "category_id 77 is not among the categories"),
        (lambda c: c["annotations"][0].update(bbox=[1, 2, 3]), "bbox must be 4 finite numbers"),
        (lambda c: c["images"][0].update(width="wide"), "'width' must be int"),
        (lambda c: c["images"].append(dict(c["images"][0])), "appears twice"),
    ],
)
def test_bad_annotations_are_one_clear_error_naming_the_file(tmp_path, edit, message):
    root = _coco_dir(tmp_path)
    _rewrite(root, "val", edit)
    with pytest.raises(DataError, match=message) as e:
        load_coco(root)
    assert "instances_val.json" in str(e.value)


def test_missing_files_and_layouts(tmp_path):
    root = _coco_dir(tmp_path)
    (root / "val" / "000002.png").unlink()
    with pytest.raises(DataError, match=r"val/000002.png is missing"):
        load_coco(root)
    (root / "annotations" / "instances_val.json").write_text("{not json")
    with pytest.raises(DataError, match="instances_val.json: not valid JSON"):
        load_coco(root)
    (root / "annotations" / "instances_val.json").unlink()
    with pytest.raises(DataError, match="no annotations/instances_val2017.json or annotations/instances_val.json"):
        load_coco(root)
    with pytest.raises(DataError, match="not a directory"):
        load_coco(tmp_path / "nowhere")


def test_an_image_of_another_size_than_annotated_is_refused(tmp_path):
    root = _coco_dir(tmp_path)
    Image.new("RGB", (20, 30)).save(root / "val" / "000001.png")
    _, val = load_coco(root)
    with pytest.raises(DataError, match="000001.png is 20x30 but the annotations say"):
        val[1]


# ----- transforms and batches -------------------------------------------------------------------------------------


def test_flip_moves_the_boxes_with_the_pixels():
    coco, px = shapes_coco(1, seed=1)
    ds = in_memory(coco, px, "one")
    img, target = ds[0]
    tf = DetectionTransform(3, (0.0,) * 3, (1.0,) * 3, train=True, scale_jitter=(1.0, 1.0), crop_prob=0.0)
    torch.manual_seed(0)
    for _ in range(8):  # both outcomes of the coin
        x, t = tf(img, target)
        H, W = x.shape[1:]
        flipped = not torch.allclose(x, img.float() / 255)
        for (cx, cy, w, h), (x0, y0, x1, y1) in zip(t["boxes"].tolist(), target["boxes"].tolist(), strict=True):
            ex0 = W - x1 if flipped else x0
            assert (cx - w / 2) * W == pytest.approx(ex0, abs=1e-4) and (cy - h / 2) * H == pytest.approx(y0, abs=1e-4)
            crop_out = x[:, round(y0) : round(y1), round((cx - w / 2) * W) : round((cx + w / 2) * W)]
            crop_in = img[:, round(y0) : round(y1), round(x0) : round(x1)].float() / 255
            assert torch.allclose(crop_out, crop_in.flip(-1) if flipped else crop_in)


def test_crop_box_cuts_and_drops_boxes_by_hand():
    img = torch.arange(3 * 10 * 12, dtype=torch.uint8).reshape(3, 10, 12)
    boxes = torch.tensor([[1.0, 1.0, 5.0, 4.0], [6.0, 2.0, 11.0, 9.0], [0.0, 8.0, 2.0, 10.0]])
    target = {"boxes": boxes, "labels": torch.tensor([7, 8, 9]), "image_id": 3}
    x, t = crop_box(img, target, top=2, left=3, h=5, w=6)  # rows 2-6, columns 3-8
    assert torch.equal(x, img[:, 2:7, 3:9]) and t["image_id"] == 3
    # box 0 -> (0, 0, 2, 2) cut at the left and top; box 1 -> (3, 0, 6, 5) cut right and bottom; box 2 is outside
    assert t["boxes"].tolist() == [[0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 6.0, 5.0]] and t["labels"].tolist() == [7, 8]
    _, none = crop_box(img, target, top=0, left=11, h=1, w=1)  # a window touching no box: an image with no target
    assert none["boxes"].shape == (0, 4) and none["labels"].shape == (0,)


def test_random_crop_moves_the_boxes_with_the_pixels():
    H, W = 90, 120
    img = torch.zeros(3, H, W, dtype=torch.uint8)
    img[0] = torch.arange(W, dtype=torch.uint8)[None]  # each pixel holds its own column and row
    img[1] = torch.arange(H, dtype=torch.uint8)[:, None]
    boxes = torch.tensor([[5.0, 5.0, 40.0, 30.0], [60.0, 20.0, 118.0, 88.0], [30.0, 50.0, 70.0, 80.0]])
    target = {"boxes": boxes, "labels": torch.tensor([0, 1, 2])}
    tf = DetectionTransform(3, (0.0,) * 3, (1.0,) * 3, train=True, hflip=False, scale_jitter=(1.0, 1.0),
                            crop_prob=1.0, crop_scale=(0.4, 0.8))  # fmt: skip
    torch.manual_seed(0)
    for _ in range(10):
        x, t = tf(img, target)
        h, w = x.shape[1:]
        left, top = round(x[0, 0, 0].item() * 255), round(x[1, 0, 0].item() * 255)
        assert 0.4 * H - 1 <= h <= 0.8 * H + 1 and 0.4 * W - 1 <= w <= 0.8 * W + 1
        expect = (boxes - torch.tensor([left, top, left, top])).clamp(min=0)
        expect[:, 0::2], expect[:, 1::2] = expect[:, 0::2].clamp(max=w), expect[:, 1::2].clamp(max=h)
        keep = (expect[:, 2] > expect[:, 0]) & (expect[:, 3] > expect[:, 1])
        cx, cy, bw, bh = t["boxes"].unbind(-1)
        got = torch.stack(((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h), -1)
        torch.testing.assert_close(got, expect[keep], atol=1e-3, rtol=0)
        assert t["labels"].tolist() == torch.tensor([0, 1, 2])[keep].tolist()


def test_resize_keeps_normalised_boxes_and_caps_the_long_side():
    coco, px = shapes_coco(1, seed=2)
    img, target = in_memory(coco, px, "one")[0]
    x, t = DetectionTransform(3, (0.5,) * 3, (0.5,) * 3, min_size=200, max_size=240)(img, target)
    H, W = img.shape[1:]
    assert max(x.shape[1:]) <= 240 and (min(x.shape[1:]) == 200 or max(x.shape[1:]) == 240)
    ref, _ = DetectionTransform(3, (0.5,) * 3, (0.5,) * 3)(img, target)
    assert ref.shape[1:] == (H, W)
    torch.testing.assert_close(t["boxes"], DetectionTransform(3, (0.5,) * 3, (0.5,) * 3)(img, target)[1]["boxes"])


def test_collate_keeps_ids_and_sizes():
    coco, px = shapes_coco(3, seed=4)
    ds = in_memory(coco, px, "three")
    tf = DetectionTransform(3, (0.0,) * 3, (1.0,) * 3)
    batch = collate_detection([tf(*ds[i]) for i in range(3)])
    assert batch.image_ids == [1, 2, 3]
    assert batch.orig_sizes == [(im["height"], im["width"]) for im in coco["images"]]
    for b, im in enumerate(coco["images"]):
        assert batch.pixel_mask[b].sum() == im["height"] * im["width"]


# ----- COCO AP by pycocotools -------------------------------------------------------------------------------------


def _one_box_gt(categories=(5,)) -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0}
        ],  # fmt: skip
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
    }


def test_ap_of_a_perfect_and_of_a_shifted_box_by_hand():
    gt = _one_box_gt()
    stats, per_class = coco_evaluate(gt, [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.9}])
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0) and per_class == [pytest.approx(1.0)]
    # shifted right by 6 px: IoU = 34*40 / (2*1600 - 34*40) = 1360 / 1840 = 0.739 -> a hit at IoU 0.50..0.70 (5 of
    # the 10 thresholds), a miss from 0.75: AP = 0.5, AP50 = 1, AP75 = 0
    stats, _ = coco_evaluate(gt, [{"image_id": 1, "category_id": 5, "bbox": [16, 10, 40, 40], "score": 0.9}])
    assert stats[0] == pytest.approx(0.5) and stats[1] == pytest.approx(1.0) and stats[2] == pytest.approx(0.0)
    # the right box under the wrong category: nothing found
    gt2 = _one_box_gt(categories=(5, 6))
    stats, per_class = coco_evaluate(gt2, [{"image_id": 1, "category_id": 6, "bbox": [10, 10, 40, 40], "score": 0.9}])
    assert stats[0] == pytest.approx(0.0) and per_class[0] == pytest.approx(0.0) and math.isnan(per_class[1])
    stats, _ = coco_evaluate(gt, [])
    assert stats[0] == pytest.approx(0.0)


def test_postprocess_scales_normalised_boxes_to_pixels():
    logits = torch.tensor([[[2.0, 0.0, 5.0], [0.0, 3.0, 0.0]]])  # (1, 2 queries, 2 classes + no-object)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    ((scores, labels, xyxy),) = postprocess(logits, boxes, [(100, 200)])  # H 100, W 200
    p = logits.softmax(-1)[0]
    assert labels.tolist() == [0, 1]
    torch.testing.assert_close(scores, torch.stack([p[0, 0], p[1, 1]]))  # no-object's 5.0 is never the answer
    torch.testing.assert_close(xyxy, torch.tensor([[80.0, 30.0, 120.0, 70.0], [0.0, 50.0, 100.0, 100.0]]))


class _Oracle(torch.nn.Module):
    """A 'detector' that returns the ground truth of each image it is shown (looked up by the image's mean)."""

    def __init__(self, ds, num_classes):
        super().__init__()
        self.ds, self.K = ds, num_classes

    def forward(self, images, pixel_mask):
        B, Q = images.shape[0], 10
        logits = torch.full((B, Q, self.K + 1), -10.0)
        logits[..., -1] = 10.0
        boxes = torch.full((B, Q, 4), 0.5)
        for b in range(B):
            key = images[b][:, pixel_mask[b]].mean().item()
            target = self.lookup[round(key, 4)]
            n = len(target["labels"])
            logits[b, torch.arange(n), target["labels"]] = 10.0
            logits[b, :n, -1] = -10.0
            boxes[b, :n] = target["norm"]
        return DetrOutput(logits=logits, pred_boxes=boxes, aux=[])


def test_the_evaluator_gives_ap_1_to_the_ground_truth():
    coco, px = shapes_coco(12, seed=6)
    ds = in_memory(coco, px, "twelve")
    tf = DetectionTransform(3, (0.0,) * 3, (1.0,) * 3)
    oracle = _Oracle(ds, 4)
    samples = [tf(*ds[i]) for i in range(len(ds))]
    oracle.lookup = {round(x.mean().item(), 4): {**t, "norm": t["boxes"]} for x, t in samples}
    ev = DetectionEvaluator(coco, ds.categories.ids)
    for start in (0, 5):
        ev.update(oracle, collate_detection(samples[start : start + 5]))
    result = ev.compute()  # 10 of the 12 images were seen: the ground truth is cut to them
    assert result.count == 10
    assert result.ap == pytest.approx(1.0, abs=1e-6) and result.ap50 == pytest.approx(1.0)
    assert all(a == pytest.approx(1.0) or math.isnan(a) for a in result.per_class_ap)
    assert len(result.examples) == 8 and all(d["score"] > 0.99 for dets in result.examples.values() for d in dets)


# ----- the task through the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("det") / "run"
    args = ["train", "--task", "detection", "--epochs", "2", "--shapes-train", "32", "--shapes-val", "8"]
    assert main([*args, "--out", str(out)]) == 0
    return out


def test_train_writes_a_detection_report(detection_run):
    report = (detection_run / "report.md").read_text()
    assert "detr_tiny on shapes (detection)" in report and "AP per category" in report
    for name in ("curves.png", "per_category_ap.png", "checkpoint.safetensors", "checkpoint_best.safetensors"):
        assert (detection_run / name).is_file()
    rows = [json.loads(line) for line in (detection_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss_ce", "train_loss_bbox", "train_loss_giou", "train_loss_ce_0", "val_ap", "val_ap50"} <= set(
        rows[0]
    )
    config = json.loads((detection_run / "config.json").read_text())
    # DETR's optimiser when the flags are not given
    assert config["lr"] == 2e-4 and config["weight_decay"] == 1e-4 and config["clip_grad"] == 0.1
    assert config["model"] == "detr_tiny" and config["data"] == "shapes"
    final = json.loads((detection_run / "final_metrics.json").read_text())
    assert 0 <= final["ap"] <= 1 and len(final["per_class_ap"]) == 4


def test_eval_prints_coco_ap(detection_run, capsys):
    assert main(["eval", "--checkpoint", str(detection_run)]) == 0
    text = capsys.readouterr().out
    assert "task detection" in text and "AP50" in text and "AP per category" in text
    assert all(name in text for name in SHAPE_CLASSES)


def test_detect_draws_and_prints_and_can_be_typed_twice(detection_run, tmp_path):
    coco, px = shapes_coco(2, seed=9)
    paths = []
    for i, arr in enumerate(px):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(arr).save(paths[-1])
    out = tmp_path / "drawn"
    args = ["detect", "--checkpoint", str(detection_run), *map(str, paths), "--out", str(out), "--threshold", "0"]
    for _ in range(2):
        r = run_cli(*args, "--json", "--topk", "3")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert [d["image"] for d in report] == list(map(str, paths))
        assert all(len(d["detections"]) == 3 for d in report)
        det = report[0]["detections"][0]
        assert det["category"] in SHAPE_CLASSES and 0 <= det["score"] <= 1 and len(det["box"]) == 4
        assert sorted(p.name for p in out.iterdir()) == ["img0.detections.png", "img1.detections.png"]
    with Image.open(out / "img0.detections.png") as im:
        assert im.size == (px[0].shape[1], px[0].shape[0])
    r = run_cli(*args)
    assert r.returncode == 0 and "img1.png: 100 detection(s)" not in r.stdout and "detection(s) ->" in r.stdout


def test_detect_never_overwrites_a_users_file_and_refuses_bad_flags(detection_run, tmp_path):
    img = tmp_path / "photo.png"
    Image.fromarray(shapes_coco(1, seed=1)[1][0]).save(img)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "photo.detections.png"
    Image.new("RGB", (4, 4)).save(mine)
    before = mine.read_bytes()
    r = run_cli("detect", "--checkpoint", str(detection_run), str(img), "--out", str(out))
    assert r.returncode == 2 and "was not written by vitlab detect" in r.stderr and "Traceback" not in r.stderr
    assert mine.read_bytes() == before
    for flags, message in [
        (["--threshold", "1.5"], "--threshold must be in [0, 1]"),
        (["--topk", "0"], "--topk must be >= 1"),
        (["--min-size", "3"], "--min-size must be >= 16"),
    ]:
        r = run_cli("detect", "--checkpoint", str(detection_run), str(img), "--out", str(tmp_path / "o2"), *flags)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    r = run_cli("detect", "--checkpoint", str(detection_run), str(tmp_path / "absent.png"), "--out", str(out))
    assert r.returncode == 2 and "absent.png" in r.stderr


def test_data_shapes_then_train_on_coco_dir(tmp_path, capsys):
    root = tmp_path / "shapes"
    assert main(["data", "shapes", "--out", str(root), "--train", "12", "--val", "4"]) == 0
    assert "train: 12 images" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "annotations").iterdir()) == ["instances_train.json", "instances_val.json"]
    assert len(list((root / "train").iterdir())) == 12
    # the same images as the in-memory set of the same seed
    coco, px = shapes_coco(12, seed=0)
    assert np.array_equal(np.asarray(Image.open(root / "train" / "000003.png")), px[3])
    assert json.loads((root / "annotations" / "instances_train.json").read_text()) == coco
    r = run_cli("data", "shapes", "--out", str(root))
    assert r.returncode == 2 and "already exists" in r.stderr
    assert not list(tmp_path.glob(".*partial"))
    out = tmp_path / "run"
    args = ["train", "--task", "detection", "--data", f"coco:{root}", "--epochs", "1", "--batch-size", "4"]
    assert main([*args, "--out", str(out)]) == 0
    assert "AP" in (out / "report.md").read_text()


def test_detection_bad_input_is_one_line(tmp_path):
    for args, message in [
        (["--data", "coco:" + str(tmp_path / "nope")], "not a directory"),
        (["--data", "digits"], "--task detection reads --data shapes or coco:ROOT"),
        (["--eos-coef", "0"], "--eos-coef must be in (0, 1]"),
        (["--crop-prob", "1.5"], "--crop-prob must be in [0, 1]"),
        (["--min-size", "800", "--max-size", "400"], "--max-size (400) must be >= --min-size (800)"),
        (["--model", "resnet18"], "--model resnet18 is a classifier; --task detection trains a detector"),
    ]:
        r = run_cli("train", "--task", "detection", "--epochs", "1", "--out", str(tmp_path / "r"), *args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert not (tmp_path / "r").exists()


def test_backbone_pretrained_loads_the_classifier_and_freezes_its_batch_norm(tmp_path):
    """--backbone-pretrained: a classification checkpoint's weights and BN statistics start the backbone, its BN is
    frozen (no BatchNorm2d left, statistics kept through training) and --lr-backbone 0 leaves it untouched."""
    from safetensors.torch import save_file

    from vitlab import create_model
    from vitlab.cli.common import load_model

    source = create_model("resnet18", num_classes=7)
    with torch.no_grad():
        for t in source.state_dict().values():
            t.add_(torch.rand_like(t.float()).to(t.dtype) * 0.1 + 0.05 if t.is_floating_point() else 0)
    file = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, file)
    out = tmp_path / "run"
    args = ["train", "--task", "detection", "--backbone", "resnet18", "--backbone-pretrained", str(file)]
    args += ["--lr-backbone", "0", "--epochs", "1", "--batch-size", "4", "--shapes-train", "8", "--shapes-val", "4"]
    assert main([*args, "--out", str(out)]) == 0
    model = load_model(str(out), None)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    trained = model.backbone.model.state_dict()
    expected = {k: v for k, v in source.state_dict().items() if k in trained}
    assert "layer4.1.bn2.running_var" in expected and "conv1.weight" in expected
    for k, v in expected.items():
        torch.testing.assert_close(trained[k], v.to(trained[k].dtype), msg=k)
    assert json.loads((out / "config.json").read_text())["task_cfg"]["lr_backbone"] == 0
