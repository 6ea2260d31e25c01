"""DETR against a random-initialised transformers DetrForObjectDetection of a small config, weights perturbed."""

import pytest
import torch

from vitlab import create_model
from vitlab.models.detr import DETR, DetrConfig, sine_position_encoding
from vitlab.weights.detr import convert_detr_hf, convert_detr_official

transformers = pytest.importorskip("transformers")


def _hf_tiny():
    bb = transformers.ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage4"],
    )
    cfg = transformers.DetrConfig(
        use_timm_backbone=False,
        backbone_config=bb,
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=10,
        num_labels=5,
    )
    torch.manual_seed(0)
    hf = transformers.DetrForObjectDetection(cfg).eval()
    with torch.no_grad():  # every weight and statistic matters: perturb them away from their init values
        for name, t in hf.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.05)
                if "running_var" in name:
                    t.abs_().add_(0.5)
    return hf


def _vitlab_tiny():
    backbone = create_model(
        "resnet18",
        features_only=True,
        out_indices=(-1,),
        layers=(1, 1, 1, 1),
        widths=(16, 32, 64, 128),
        stem_width=16,
    )
    cfg = DetrConfig(
        backbone="resnet18",
        num_classes=5,
        d_model=32,
        num_heads=4,
        enc_layers=2,
        dec_layers=2,
        ffn_dim=64,
        num_queries=10,
    )
    return DETR(cfg, backbone).eval()


def test_matches_hf_on_a_padded_batch_of_two_sizes():
    hf = _hf_tiny()
    ours = _vitlab_tiny()
    ours.load_state_dict(convert_detr_hf(hf.state_dict()), strict=True)
    torch.manual_seed(1)
    images = torch.randn(2, 3, 96, 128)
    mask = torch.ones(2, 96, 128, dtype=torch.bool)
    mask[1, 64:, :] = False  # second image is 64 x 96, zero-padded
    mask[1, :, 96:] = False
    images[1][:, ~mask[1]] = 0
    with torch.no_grad():
        ref = hf(pixel_values=images, pixel_mask=mask.long())
        out = ours(images, mask)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.pred_boxes, ref.pred_boxes, atol=1e-4, rtol=1e-4)
    # transformers 5 with auxiliary_loss=True feeds each layer-normed output into the next decoder layer, which the
    # reference code does not (it norms copies); so the aux outputs are compared by shape only.
    assert [tuple(t.shape) for t in out.aux[0]] == [(2, 10, 6), (2, 10, 4)] and len(out.aux) == 1


def test_padding_leaves_the_real_image_unchanged():
    ours = _vitlab_tiny()
    torch.manual_seed(2)
    img = torch.randn(1, 3, 64, 64)
    padded = torch.zeros(1, 3, 96, 128)
    padded[..., :64, :64] = img
    mask = torch.zeros(1, 96, 128, dtype=torch.bool)
    mask[:, :64, :64] = True
    with torch.no_grad():
        a, b = ours(img), ours(padded, mask)
    # the backbone's receptive field sees the zeros near the border, so only the positions are exactly invariant
    pos_a = sine_position_encoding(torch.ones(1, 2, 2, dtype=torch.bool), 32)
    pos_b = sine_position_encoding(mask[:, ::32, ::32], 32)
    torch.testing.assert_close(pos_b[..., :2, :2], pos_a)
    assert a.logits.shape == b.logits.shape == (1, 10, 6) and torch.isfinite(b.pred_boxes).all()


def test_r50_parameter_count_equals_hf():
    with torch.device("meta"):  # sizes only
        model = DETR(DetrConfig(), create_model("resnet50", features_only=True, out_indices=(-1,)))
    assert sum(p.numel() for p in model.parameters()) == 41_524_768  # DetrForObjectDetection, facebook/detr-resnet-50


def test_backbone_batch_norm_is_frozen_and_trains_the_rest():
    model = _vitlab_tiny().train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    out = model(torch.randn(2, 3, 64, 64))
    (out.logits.sum() + out.pred_boxes.sum() + sum(a[0].sum() for a in out.aux)).backward()
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in stats.items())
    assert model.query_embed.weight.grad is not None and model.input_proj.weight.grad.abs().sum() > 0
    assert ((out.pred_boxes > 0) & (out.pred_boxes < 1)).all()


def _official_names(ours: dict) -> dict:
    """The official repo's names for our tiny model's tensors (written from facebookresearch/detr's module names)."""
    out = {}
    for k, v in ours.items():
        k = k.replace("backbone.model.", "backbone.0.body.").replace("decoder_norm.", "transformer.decoder.norm.")
        k = k.replace("class_head.", "class_embed.").replace("box_head.", "bbox_embed.")
        for side in ("encoder", "decoder"):
            if k.startswith(f"{side}."):
                k = f"transformer.{side}.layers." + k[len(side) + 1 :]
        k = (
            k.replace(".cross_attn.", ".multihead_attn.")
            .replace(".mlp.fc1.", ".linear1.")
            .replace(".mlp.fc2.", ".linear2.")
        )
        dec = "transformer.decoder" in k
        k = k.replace(".self_attn_norm.", ".norm1.").replace(".cross_attn_norm.", ".norm2.")
        k = k.replace(".final_norm.", ".norm3." if dec else ".norm2.")
        out[k] = v
    fused = {}
    for k in list(out):
        for kind in ("weight", "bias"):
            if k.endswith(f".q_proj.{kind}"):
                base = k[: -len(f".q_proj.{kind}")]
                parts = [out.pop(f"{base}.{p}_proj.{kind}") for p in "qkv"]
                fused[f"{base}.in_proj_{kind}"] = torch.cat(parts)
    return {**out, **fused}


def test_official_repo_names_load_and_give_the_same_outputs():
    src = _vitlab_tiny()
    with torch.no_grad():
        for t in src.state_dict().values():
            t.add_(torch.randn_like(t) * 0.05)
    official = _official_names(src.state_dict())
    assert "transformer.decoder.layers.1.multihead_attn.in_proj_weight" in official
    assert "transformer.encoder.layers.0.norm2.weight" in official and "bbox_embed.layers.2.bias" in official
    assert "backbone.0.body.layer4.0.downsample.1.running_var" in official
    dst = _vitlab_tiny()
    dst.load_state_dict(convert_detr_official(official), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x).logits, src(x).logits)


def test_r101_parameter_count():
    from vitlab.models.detr import DETR_VARIANTS

    with torch.device("meta"):
        model = DETR(DetrConfig(**DETR_VARIANTS["detr_resnet101"]), create_model("resnet101", features_only=True))
    # R50's 41,524,768 + ResNet-101's extra 17 bottlenecks (18,992,128 with BN affine) - their frozen BN affine
    # (17 x 2 x (256 + 256 + 1024) = 52,224), which are buffers as in the reference
    assert sum(p.numel() for p in model.parameters()) == 41_524_768 + 18_992_128 - 52_224


def test_dc5_is_resnet50_at_stride_16_with_the_same_parameters():
    """DETR-DC5 (sec. 4): the last stage dilated instead of strided, so the map doubles in side; no new weights."""
    plain, dc5 = create_model("detr_resnet50").eval(), create_model("detr_resnet50_dc5").eval()
    assert sum(p.numel() for p in dc5.parameters()) == sum(p.numel() for p in plain.parameters())
    assert dc5.backbone.feature_info.reduction() == [16] and plain.backbone.feature_info.reduction() == [32]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert dc5.backbone(x)[-1].shape[-2:] == (4, 6) and plain.backbone(x)[-1].shape[-2:] == (2, 3)


@pytest.mark.parametrize(
    "backbone",
    ["swin_tiny_patch4_window7_224", "convnext_tiny", "vit_small_patch16_224", "cvt_13_224", "resnet50"],
)
def test_any_pyramid_backbone_detects_a_padded_batch(backbone):
    """`--backbone NAME`: DETR on a Swin (NHWC maps), a ConvNeXt, a ViT (its last map, the position table resized to
    each batch and the batch padded to whole patches), a CvT; images of two sizes in one padded batch."""
    from vitlab.registry import get_entry

    small = get_entry(backbone).config_cls().test_overrides()
    small.pop("img_size", None)
    model = create_model("detr_tiny", backbone=backbone, backbone_kwargs=small, backbone_index=-1, num_classes=3)
    images, mask = torch.randn(2, 3, 72, 100), torch.ones(2, 72, 100, dtype=torch.bool)
    mask[1, 60:, :], mask[1, :, 90:] = False, False  # the second image is 60x90, padded
    out = model.train()(images, mask)
    assert out.logits.shape == (2, 20, 4) and out.pred_boxes.shape == (2, 20, 4)
    (out.logits.sum() + out.pred_boxes.sum()).backward()
    first = model.backbone.model.get_submodule(model.backbone.model.first_conv)
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0  # the loss reaches the stem
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
