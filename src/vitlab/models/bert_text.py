"""A BERT text encoder with mean pooling: the pretrained sentence encoder a LiT text tower can start from.

Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding", arXiv 1810.04805,
sec. 3: token + learned position + segment (token-type) embeddings, summed and layer-normed, then post-LN blocks,
x = LN(x + attn(x)), x = LN(x + mlp(x)), with exact (erf) GELU, attention masked where the input is padding.
Reimers & Gurevych, "Sentence-BERT", arXiv 1908.10084, sec. 3: a sentence embedding is the mean of the last hidden
states over the real (non-padding) tokens; all-MiniLM-L6-v2 (Wang et al., MiniLM, arXiv 2002.10957; 6 layers,
width 384, 12 heads, 22.7M parameters) is such an encoder, trained on sentence pairs.
Zhai et al., "LiT: Zero-Shot Transfer with Locked-image text Tuning", arXiv 2111.07991: one tower pretrained and
locked, the other trained to meet it. `BertTextTower` is the text side of that: the encoder, mean pooling, and a new
linear projection into the joint image-text space (trained even when the encoder is locked).

Differs from the reference code (HF transformers `modeling_bert.py`) in layout only: q/k/v are one fused projection
(vitlab's `MaskedAttention`, SDPA), the position and token-type tables are plain parameters, and there is no dropout
(LiT locks the pretrained encoder; the outputs equal HF's in eval mode). The pooler (tanh(W h_[CLS]), BERT's
next-sentence head) exists only with `pooler=True`, for the parameter count and the state dict of HF's `BertModel`;
mean pooling does not use it. HF's BERT names load through `vitlab.weights.bert.convert_bert_hf`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

from vitlab.layers import MaskedAttention, Mlp

__all__ = ["BertConfig", "BertEncoder", "BertTextTower", "MINILM_L6", "mean_pool", "padding_bias"]


@dataclass(frozen=True)
class BertConfig:
    """BERT's sizes; the defaults are all-MiniLM-L6-v2's (22,713,216 parameters with the pooler, as HF BertModel)."""

    vocab_size: int = 30522  # BERT's uncased WordPiece vocabulary
    width: int = 384  # token width D (MiniLM-L6-H384)
    depth: int = 6  # encoder blocks
    num_heads: int = 12  # head dim 32
    mlp_dim: int = 1536  # MLP hidden width (BERT's 4 D)
    max_positions: int = 512  # rows of the learned position table: the longest input
    type_vocab_size: int = 2  # segment A / B; single sentences use A (row 0)
    norm_eps: float = 1e-12  # BERT's LayerNorm epsilon (every released BERT)
    pad_id: int = 0  # [PAD]: masked out of attention and of the mean
    pooler: bool = True  # BertModel's tanh pooler on [CLS]; unused by mean pooling

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be divisible by num_heads={self.num_heads}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id} must be an id of the {self.vocab_size}-token vocabulary")


MINILM_L6 = BertConfig()


def padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1 = token, 0 = padding -> (B, 1, 1, T) additive attention bias: 0 for tokens, the most negative float
    for padding (HF's choice: unlike -inf it keeps a row of only padding finite)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden (B, T, D) over the positions where mask (B, T) is 1 -> (B, D) (Sentence-BERT's pooling)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class BertBlock(nn.Module):
    """Post-LN block: x = LN(x + attn(x)); x = LN(x + mlp(x)). (B, T, D) -> (B, T, D)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attn = MaskedAttention(cfg.width, cfg.num_heads)
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, act_layer=nn.GELU)  # exact GELU: BERT's hidden_act "gelu"
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, bias))
        return self.norm2(x + self.mlp(x))


class BertEncoder(nn.Module):
    """Ids -> word + position + token-type embeddings -> LN -> post-LN blocks -> last hidden state.

    Shapes: input_ids (B, T), T <= max_positions; attention_mask (B, T), 1 = token (default: ids != pad_id)
    -> (B, T, D).
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.width
        self.token_embed = nn.Embedding(cfg.vocab_size, D)
        self.pos_embed = nn.Parameter(torch.empty(cfg.max_positions, D))
        self.type_embed = nn.Parameter(torch.empty(cfg.type_vocab_size, D))
        self.norm_embed = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(BertBlock(cfg) for _ in range(cfg.depth))
        self.pooler = nn.Linear(D, D) if cfg.pooler else None
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        # BERT's initialisation (sec. A.2 / the reference `_init_weights`): every matrix and table N(0, 0.02), biases 0
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for t in (self.token_embed.weight, self.pos_embed, self.type_embed):
            nn.init.normal_(t, std=0.02)
        with torch.no_grad():
            self.token_embed.weight[self.cfg.pad_id].zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input_ids.ndim != 2 or input_ids.shape[1] > self.cfg.max_positions:
            raise ValueError(
                f"expected input_ids of shape (B, T) with T <= {self.cfg.max_positions} (the position table), got "
                f"{tuple(input_ids.shape)}"
            )
        T = input_ids.shape[1]
        if attention_mask is None:
            attention_mask = input_ids.ne(self.cfg.pad_id)
        types = self.type_embed[0] if token_type_ids is None else self.type_embed[token_type_ids]  # (D,) | (B, T, D)
        x = self.norm_embed(self.token_embed(input_ids) + self.pos_embed[:T] + types)  # (B, T, D)
        bias = padding_bias(attention_mask, x.dtype)  # (B, 1, 1, T)
        for blk in self.blocks:
            if self.grad_checkpointing and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(blk, x, bias, use_reentrant=False)
            else:
                x = blk(x, bias)
        return x

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """BertModel's pooler output, tanh(W h_[CLS] + b): (B, T, D) -> (B, D). Needs `pooler=True`."""
        if self.pooler is None:
            raise ValueError("this encoder was built without the pooler (pooler=False)")
        return torch.tanh(self.pooler(hidden[:, 0]))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence embeddings: the last hidden state mean-pooled over the real tokens. (B, T) -> (B, D)."""
        if attention_mask is None:
            attention_mask = input_ids.ne(self.cfg.pad_id)
        return mean_pool(self(input_ids, attention_mask), attention_mask)


class BertTextTower(nn.Module):
    """A CLIP text tower made of a BERT encoder: ids -> encoder -> mean over real tokens -> projection (no bias).

    Shapes: input_ids (B, T), zero ([PAD]) padded -> tokens (B, T, D) -> embedding (B, E). The pooler is not built.
    """

    def __init__(self, cfg: BertConfig, embed_dim: int) -> None:
        super().__init__()
        if cfg.pooler:
            raise ValueError("a text tower mean-pools; build its BertConfig with pooler=False")
        self.encoder = BertEncoder(cfg)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=cfg.width**-0.5)  # as CLIP's projections

    @property
    def grad_checkpointing(self) -> bool:
        return self.encoder.grad_checkpointing

    @grad_checkpointing.setter
    def grad_checkpointing(self, enable: bool) -> None:
        self.encoder.grad_checkpointing = enable

    def forward_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids)  # (B, T, D)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.encoder.embed(input_ids))  # (B, E)
