"""Blocks shared by several model families."""

from vitlab.layers.aa_conv import AugmentedConv2d
from vitlab.layers.attention import Attention, MaskedAttention, attend
from vitlab.layers.drop_path import DropPath
from vitlab.layers.local_attention import LocalSelfAttention
from vitlab.layers.mlp import Mlp, SwiGLU, swiglu_hidden
from vitlab.layers.nonlocal_block import NonLocalBlock
from vitlab.layers.patch_embed import PatchEmbed
from vitlab.layers.pos_embed import resample_pos_embed, sincos_pos_embed_2d

__all__ = [
    "Attention",
    "AugmentedConv2d",
    "MaskedAttention",
    "attend",
    "DropPath",
    "LocalSelfAttention",
    "Mlp",
    "NonLocalBlock",
    "PatchEmbed",
    "resample_pos_embed",
    "sincos_pos_embed_2d",
    "SwiGLU",
    "swiglu_hidden",
]
