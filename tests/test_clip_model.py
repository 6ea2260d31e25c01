"""CLIP against random-initialised transformers CLIPModels (ViT-B/32 and a small config), weights perturbed so every
weight matters; openai/open_clip names; the logit-scale clamp; the causal mask and end-of-text pooling."""

import dataclasses
import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from vitlab.data.tokenizer import ClipTokenizer, find_clip_vocab
from vitlab.errors import UnknownModelError
from vitlab.factory import create_model, load_checkpoint
from vitlab.models.clip import CLIP_VARIANTS, ClipConfig, ClipModel, create_clip
from vitlab.weights.clip import CLIP_HF_VARIANTS, clip_config_from_hf, convert_clip, convert_clip_hf

transformers = pytest.importorskip("transformers")

SMALL_HF = dict(
    vision_config=dict(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256
    ),
    text_config=dict(
        vocab_size=100, bos_token_id=98, eos_token_id=99, pad_token_id=0, max_position_embeddings=16, hidden_size=48,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=192,
    ),
    projection_dim=32,
)  # fmt: skip


def _hf_clip(tmp_path, seed=0, **kw):
    """A perturbed random-init CLIPModel saved with save_pretrained -> (HF model, vitlab model loaded from the dir)."""
    torch.manual_seed(seed)
    hf = transformers.CLIPModel(transformers.CLIPConfig(**kw)).eval()
    with torch.no_grad():  # every weight matters: move them all off their init values (zero biases, unit LN gains)
        for t in hf.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.02)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    model = ClipModel(ClipConfig(**clip_config_from_hf(config))).eval()
    model.load_state_dict(convert_clip(load_file(tmp_path / "model.safetensors")))  # strict: every key fits
    loaded = load_checkpoint(tmp_path).eval()  # as a user loads the directory: the nearest variant, resized
    assert loaded.cfg == replace(model.cfg, mean=loaded.cfg.mean, std=loaded.cfg.std)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    return hf, model


def _ids(batch, length, vocab, context, seed=1):
    """Token rows as a tokenizer makes them: start, words, end-of-text (the largest id), zero padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, context, dtype=torch.long)
    for i, n in enumerate(length):
        ids[i, 0] = vocab - 2  # start-of-text
        ids[i, 1 : n - 1] = torch.randint(1, vocab - 2, (n - 2,), generator=g)
        ids[i, n - 1] = vocab - 1  # end-of-text
    return ids


def _max_diff(hf_out, out) -> dict:
    names = ("image_embeds", "text_embeds", "logits_per_image", "logits_per_text")
    return {n: (getattr(hf_out, n) - getattr(out, n)).abs().max().item() for n in names}


def test_vit_b32_matches_transformers(tmp_path):
    hf, model = _hf_clip(tmp_path, vision_config=dict(patch_size=32))
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in hf.parameters()) == 151_277_313
    assert n_params == sum(p.numel() for p in create_clip("clip_vit_base_patch32_224").parameters())
    # HF's default config is the registered one, but for HF's rounded log(1/0.07) = 2.6592
    assert model.cfg == replace(create_clip("clip_vit_base_patch32_224").cfg, logit_scale_init=2.6592)
    images = torch.randn(1, 3, 224, 224)
    ids = _ids(2, [5, 12], 49408, 77)
    with torch.no_grad():
        hf_out = hf(input_ids=ids, pixel_values=images)
        out = model(images, ids)
    diffs = _max_diff(hf_out, out)
    assert max(diffs.values()) < 1e-4, diffs


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_small_config_matches_transformers(tmp_path, act):
    kw = json.loads(json.dumps(SMALL_HF))
    kw["vision_config"]["hidden_act"] = kw["text_config"]["hidden_act"] = act
    hf, model = _hf_clip(tmp_path, **kw)
    assert model.cfg.quick_gelu == (act == "quick_gelu")
    images, ids = torch.randn(3, 3, 32, 32), _ids(2, [3, 16], 100, 16)
    with torch.no_grad():
        hf_out = hf(input_ids=ids, pixel_values=images)
        out = model(images, ids)
    diffs = _max_diff(hf_out, out)
    assert max(diffs.values()) < 1e-5, diffs
    assert out.logits_per_image.shape == (3, 2) and torch.equal(out.logits_per_text, out.logits_per_image.t())


@pytest.mark.skipif(find_clip_vocab() is None, reason="CLIP's BPE vocabulary is not installed (run `make install`)")
def test_real_tokenizer_output_pools_at_end_of_text(tmp_path):
    kw = json.loads(json.dumps(SMALL_HF))
    kw["text_config"] = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192)
    hf, model = _hf_clip(tmp_path, **kw)  # CLIP's vocabulary and 77-token context
    tok = ClipTokenizer.from_pretrained()
    texts = ["a photo of a cat.", "A PHOTO of a Dog!!", "", "a very long caption with zebra, giraffe " * 20]
    ids = tok(texts)  # (4, 77): start, words, end-of-text, zero padding; the long one truncated
    assert (ids.argmax(dim=-1) == (ids == tok.eot_id).int().argmax(dim=-1)).all()  # EOT is the largest id
    with torch.no_grad():
        hf_text = hf(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32)).text_embeds
        assert (hf_text - model.encode_text(ids)).abs().max() < 1e-5


# openai/CLIP (and open_clip) names, written from HF's: q/k/v stacked into in_proj, projections as (D, E) matrices.
_TO_OPENAI = [
    ("vision_model.embeddings.patch_embedding.", "visual.conv1."),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.", "visual.ln_pre."),
    ("vision_model.post_layernorm.", "visual.ln_post."),
    ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
    ("text_model.embeddings.token_embedding.", "token_embedding."),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm.", "ln_final."),
    ("text_model.encoder.layers.", "transformer.resblocks."),
    (".self_attn.out_proj.", ".attn.out_proj."),
    (".layer_norm1.", ".ln_1."),
    (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
]


def _openai_state(hf_state: dict) -> dict:
    out = {}
    for hf_key, value in hf_state.items():
        if hf_key == "visual_projection.weight":
            out["visual.proj"] = value.t()  # openai/CLIP computes x @ proj: (D, E)
        elif hf_key == "text_projection.weight":
            out["text_projection"] = value.t()
        elif ".self_attn.q_proj." in hf_key:  # q, k, v stacked along the output axis, as nn.MultiheadAttention's
            key = hf_key.replace(".self_attn.q_proj.", ".attn.in_proj_").replace("in_proj_.", "in_proj_")
            for old, new in _TO_OPENAI:
                key = key.replace(old, new)
            out[key] = torch.cat([hf_state[hf_key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"])
        elif ".self_attn.k_proj." not in hf_key and ".self_attn.v_proj." not in hf_key:
            key = hf_key
            for old, new in _TO_OPENAI:
                key = key.replace(old, new)
            out[key] = value
    out["attn_mask"] = torch.zeros(1)  # extra entries some open_clip / openai checkpoints carry: dropped
    out["input_resolution"] = torch.tensor(224)
    return out


def test_openai_names_load_with_identical_outputs(tmp_path):
    hf, model = _hf_clip(tmp_path, **SMALL_HF)
    hf_state = load_file(tmp_path / "model.safetensors")
    openai_state = _openai_state(hf_state)
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in openai_state
    assert openai_state["visual.proj"].shape == (64, 32)  # (vision width, embed dim)
    other = ClipModel(model.cfg).eval()
    other.load_state_dict(convert_clip(openai_state))  # strict
    ddp = ClipModel(model.cfg).eval()
    ddp.load_state_dict(convert_clip({f"module.{k}": v for k, v in openai_state.items()}))
    save_file(
        {k: v.contiguous() for k, v in openai_state.items()}, tmp_path / "openai.safetensors"
    )  # a bare file: the loader tells the names by key
    fields = {k: v for k, v in dataclasses.asdict(model.cfg).items() if k not in ("mean", "std")}
    by_path = create_model("clip_vit_tiny_patch8_32", pretrained=tmp_path / "openai.safetensors", **fields).eval()
    images, ids = torch.randn(2, 3, 32, 32), _ids(3, [4, 9, 16], 100, 16)
    with torch.no_grad():
        ref = model(images, ids)
        for m in (other, ddp, by_path):
            out = m(images, ids)
            for name in ("image_embeds", "text_embeds", "logits_per_image", "logits_per_text"):
                assert torch.equal(getattr(out, name), getattr(ref, name)), name


def test_vitlab_names_pass_through_and_missing_projection_is_named():
    model = create_clip("clip_vit_tiny_patch8_32")
    state = model.state_dict()
    assert convert_clip(state).keys() == state.keys()
    hf_like = {"vision_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(2, 2)}
    with pytest.raises(KeyError, match="expected q, k and v"):
        convert_clip_hf(hf_like)


def test_logit_scale_init_and_clamp():
    model = create_clip("clip_vit_tiny_patch8_32").eval()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    images, ids = torch.randn(2, 3, 32, 32), _ids(3, [4, 9, 20], 49408, 77)
    img, txt = model.encode_image(images), model.encode_text(ids)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
    assert torch.allclose(model(images, ids).logits_per_image, 20.0 * img @ txt.t(), atol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))  # exp(t) = 1000 is clamped to 100
    out = model(images, ids)
    assert model.scale().item() == pytest.approx(100.0)
    assert torch.allclose(out.logits_per_image, 100.0 * img @ txt.t(), atol=1e-4)
    out.logits_per_image.sum().backward()
    assert model.logit_scale.grad.item() == 0.0  # clamped: t gets no gradient, as with the reference's in-place clamp


def test_causal_mask_and_end_of_text_pooling():
    model = create_clip("clip_vit_tiny_patch8_32").eval()
    ids = _ids(2, [10, 20], 49408, 77)
    changed = ids.clone()
    changed[:, 6] = 123  # a later token changes features from position 6 on, never before
    with torch.no_grad():
        a, b = model.text.forward_features(ids), model.text.forward_features(changed)
        assert torch.equal(a[:, :6], b[:, :6])
        assert (a[:, 6:10] - b[:, 6:10]).abs().amax() > 1e-3
        # pooling takes the end-of-text position (9 and 19): projection of the features there
        emb = model.encode_text(ids, normalize=False)
        assert torch.allclose(emb, model.text.proj(torch.stack([a[0, 9], a[1, 19]])), atol=1e-6)
        # what follows end-of-text (padding) does not matter; EOT padding (HF's pad token) pools the first EOT
        noisy = ids.clone()
        noisy[0, 10:] = 77
        noisy[1, 20:] = 49407
        assert torch.allclose(model.encode_text(noisy), model.encode_text(ids), atol=1e-6)
        # texts shorter than the context need no padding at all
        assert torch.allclose(model.encode_text(ids[:1, :10]), model.encode_text(ids[:1]), atol=1e-6)


def test_variants_and_config_errors():
    paper = {"clip_vit_base_patch32_224", "clip_vit_base_patch16_224", "clip_vit_large_patch14_224"}
    assert paper < set(CLIP_VARIANTS)
    with pytest.raises(UnknownModelError, match="clip_vit_base_patch32_224"):
        create_clip("clip_vit_base_patch32")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ClipConfig(img_size=100)
    with pytest.raises(ValueError, match="text_width=100 must be divisible"):
        ClipConfig(text_width=100)
    model = create_clip("clip_vit_tiny_patch8_32", img_size=64)
    assert model.visual.pos_embed.shape == (65, 64)
    with pytest.raises(ValueError, match="create the model with img_size=32"):
        model.encode_image(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="context_length=77"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))


def test_the_loaders_variant_table_matches_the_registered_variants():
    """weights/ knows no model: its copy of each variant's defining fields must equal the registered configs."""
    assert CLIP_HF_VARIANTS.keys() == CLIP_VARIANTS.keys()
    for name, fields in CLIP_HF_VARIANTS.items():
        cfg = dataclasses.asdict(create_clip(name).cfg)
        assert {k: cfg[k] for k in fields} == fields, name
