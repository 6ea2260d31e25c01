"""AST: parity with transformers' ASTForAudioClassification on random weights, parameter counts, the timm-style API,
and the ImageNet-ViT adaptation (averaged patch filters, the position table fitted to the spectrogram grid)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

import vitlab
from tests.conftest import randomise_weights
from tests.test_registry_contract import check_classifier, check_intermediates
from vitlab.models.ast import AST_VARIANTS, adapt_vit_state, fit_pos_grid, init_from_vit
from vitlab.registry import get_entry
from vitlab.weights.ast import AST_HF_VARIANTS, ast_model_for, ast_to_hf, convert_ast

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def _hf_ast(num_labels=3, **kw):
    torch.manual_seed(0)
    cfg = transformers.ASTConfig(**{**SMALL, "num_mel_bins": 36, "max_length": 56, **kw}, num_labels=num_labels)
    return randomise_weights(transformers.ASTForAudioClassification(cfg))  # tokens and table too (HF zeros them)


def _bank(ref, B=3):
    return torch.randn(B, ref.config.max_length, ref.config.num_mel_bins)  # HF's input_values (B, T, F)


@pytest.mark.parametrize("strides", [(10, 10), (6, 12)])
def test_logits_match_transformers(tmp_path, strides):
    ref = _hf_ast(frequency_stride=strides[0], time_stride=strides[1])
    ref.save_pretrained(tmp_path)
    ours = vitlab.load_checkpoint(tmp_path).eval()
    assert ours.model_name.startswith("ast_") and (ours.cfg.fstride, ours.cfg.tstride) == strides
    assert ours.cfg.norm_eps == 1e-12 and ours.cfg.num_classes == 3
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = _bank(ref)
    with torch.no_grad():
        expected = ref(input_values=x).logits
        got = ours(x.transpose(1, 2)[:, None])  # (B, 1, F, T)
    assert (got - expected).abs().max().item() < 1e-4
    # transformers 5's in-memory names (q_proj, layers.N) convert to the same weights
    state = convert_ast(ref.state_dict())
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())


def test_parameter_counts_equal_hf_base():
    counts = {"ast_base_patch16_stride10_audioset": (527, 86_594_063), "ast_base_patch16_stride10_speechcommands":
              (35, 85_395_491)}  # fmt: skip
    for name, (labels, count) in counts.items():
        with torch.device("meta"):
            ours = vitlab.create_model(name)
            cfg = transformers.ASTConfig(num_labels=labels, max_length=ours.cfg.max_length)
            ref = transformers.ASTForAudioClassification(cfg)
        n = sum(p.numel() for p in ours.parameters())
        assert n == sum(p.numel() for p in ref.parameters()) == count
        assert ours.patch_embed.num_patches == {1024: 12 * 101, 128: 12 * 12}[ours.cfg.max_length]


def test_hf_configs_name_the_registered_variants():
    for name, fields in AST_HF_VARIANTS.items():  # the converter's table matches the registry
        cfg = get_entry(name).config_cls(**AST_VARIANTS[name])
        assert {k: getattr(cfg, k) for k in fields} == fields, name
    base = transformers.ASTConfig().to_dict()  # MIT/ast-finetuned-audioset-10-10-0.4593's sizes
    assert ast_model_for(base) == ("ast_base_patch16_stride10_audioset", {"norm_eps": 1e-12})
    assert ast_model_for({**base, "max_length": 128}) == (
        "ast_base_patch16_stride10_speechcommands",
        {"norm_eps": 1e-12},
    )
    assert ast_model_for({**base, "max_length": 500})[1]["max_length"] == 500  # the nearest, with the config's size


def test_to_hf_round_trip(tmp_path):
    ours = randomise_weights(vitlab.create_model("ast_micro_patch16_stride10_64x200", depth=2))
    config, state = ast_to_hf(dataclasses.asdict(ours.cfg), ours.state_dict())
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    ref = transformers.ASTForAudioClassification.from_pretrained(tmp_path).eval()  # the save_pretrained layout
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())
    x = torch.randn(2, 200, 64)
    with torch.no_grad():
        assert (ref(input_values=x).logits - ours(x.transpose(1, 2)[:, None])).abs().max() < 1e-4


def test_api_contract(tmp_path):
    full = vitlab.create_model("ast_micro_patch16_stride10_64x200")
    m = vitlab.create_model("ast_micro_patch16_stride10_64x200", **full.cfg.test_overrides(), num_classes=7)
    assert m.pretrained_cfg["input_size"] == (1, 36, 46) and m.grid == (3, 4)
    x = torch.randn(3, 1, 36, 46)
    randomise_weights(m)
    y = m(x)
    assert y.shape == (3, 7) and torch.isfinite(y).all()
    m.train()
    m(x).logsumexp(-1).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    assert all(g.abs().sum() > 0 for g in grads.values())
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).logsumexp(-1).sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6, msg=n)
    m.set_grad_checkpointing(False)
    m.eval()
    check_intermediates(m, x)
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors")
    torch.testing.assert_close(vitlab.load_checkpoint(path).eval()(x), m(x), rtol=0, atol=0)
    check_classifier(m, x)
    with pytest.raises(ValueError, match=r"expected spectrograms of shape \(B, 1, 36, 46\)"):
        m(torch.randn(1, 1, 46, 36))


def test_position_table_resized_for_another_length(tmp_path):
    m = randomise_weights(vitlab.create_model("ast_micro_patch16_stride10_64x200", depth=1))
    path = vitlab.save_checkpoint(m, tmp_path / "m.safetensors")
    short = vitlab.create_model("ast_micro_patch16_stride10_64x200", pretrained=path, max_length=100)
    assert short.grid == (5, 9) and short.pos_embed.shape == (1, 2 + 45, 96)
    torch.testing.assert_close(short.pos_embed[:, :2], m.pos_embed[:, :2])
    assert short(torch.randn(1, 1, 64, 100)).shape == (1, 8)


def test_fit_pos_grid():
    table = torch.randn(1, 12, 5)
    assert fit_pos_grid(table, (3, 4), (3, 4)) is table
    const = torch.full((1, 16, 5), 0.3)
    torch.testing.assert_close(fit_pos_grid(const, (4, 4), (5, 19)), torch.full((1, 95, 5), 0.3))
    # a ramp along the source's time axis stays monotone along the target's, and constant along frequency
    ramp = torch.arange(4.0).repeat(4)[None, :, None]  # (1, 16, 1): value = column index
    out = fit_pos_grid(ramp, (4, 4), (2, 7)).reshape(2, 7)
    assert torch.all(out[:, 1:] >= out[:, :-1]) and torch.equal(out[0], out[1])


@pytest.mark.parametrize("source", ["vit", "deit"])
def test_imagenet_vit_weights_adapt(source):
    kw = dict(depth=1, embed_dim=192, num_heads=3, img_size=64)
    if source == "vit":
        vit = randomise_weights(vitlab.create_model("vit_tiny_patch16_224", **kw))
    else:
        vit = randomise_weights(vitlab.create_model("deit_tiny_distilled_patch16_224", **kw))
    ast = vitlab.create_model("ast_micro_patch16_stride10_64x200", depth=1, embed_dim=192, num_heads=3, mlp_ratio=4.0)
    head = ast.head.weight.clone()
    init_from_vit(ast, vit.state_dict())
    # sec. 2.2: the one-channel filter is the mean of the three; a grey image repeated over RGB gives 3x the tokens
    w = vit.patch_embed.proj.weight
    torch.testing.assert_close(ast.patch_embed.proj.weight, w.mean(1, keepdim=True))
    spec = torch.randn(2, 1, 64, 200)
    vit_conv = torch.nn.functional.conv2d(spec.expand(-1, 3, -1, -1), w, vit.patch_embed.proj.bias, stride=10)
    ours = ast.patch_embed.proj(spec)
    torch.testing.assert_close(3 * (ours - ast.patch_embed.proj.bias[:, None, None]),
                               vit_conv - vit.patch_embed.proj.bias[:, None, None], rtol=1e-4, atol=1e-4)  # fmt: skip
    # tokens: DeiT's distillation token, or the class token copied; the blocks are the ViT's
    want_dist = vit.dist_token if source == "deit" else vit.cls_token
    torch.testing.assert_close(ast.dist_token, want_dist)
    torch.testing.assert_close(ast.pos_embed[:, 0], vit.pos_embed[:, 0])
    torch.testing.assert_close(ast.pos_embed[:, 1], vit.pos_embed[:, 1 if source == "deit" else 0])
    assert ast.pos_embed.shape == (1, 2 + 5 * 19, 192)
    torch.testing.assert_close(ast.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    assert torch.equal(ast.head.weight, head) and torch.equal(ast.head_norm.weight, torch.ones(192))
    assert torch.isfinite(ast(spec)).all()
    with pytest.raises(ValueError, match="not a square ViT grid"):
        adapt_vit_state({**vit.state_dict(), "pos_embed": torch.zeros(1, 7, 192)}, ast)


def test_models_table_counts_flops_on_the_spectrogram():
    from vitlab.profiling import model_stats

    s = model_stats("ast_micro_patch16_stride10_64x200")
    assert s.params == 334_472 and s.img_size == 64
    # the blocks' linear layers: 4 blocks x 97 tokens x (q, k, v, proj 4 * 96^2 + MLP 2 * 96 * 192) MACs, 2 FLOPs
    # each; attention, the patch convolution (95 patches, not a square's) and the head add less than as much again
    linear = 4 * 97 * (4 * 96 * 96 + 2 * 96 * 192) * 2
    assert linear < s.flops < 2 * linear
