"""Image retrieval with an image-text model: a faiss index of normalised image embeddings, searched by text or image.

CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", arXiv:2103.00020)
scores an image against a text by the cosine of their embeddings, so a retrieval index holds L2-normalised image
embeddings and searches by inner product. Two kinds (faiss, Johnson et al., arXiv:1702.08734):

- `flat` (IndexFlatIP): exact search, every vector scored; its results are those of a brute-force top-k.
- `ivf` (IndexIVFFlat, inner product): a k-means coarse quantiser of `nlist` ~ 4 sqrt(N) cells trained on the vectors
  themselves; a query scores the vectors of its `nprobe` nearest cells only. Approximate, far faster at 10^5-10^6.
  `auto` takes `ivf` from `IVF_THRESHOLD` vectors on.

An index is a directory: `index.faiss` (faiss's own serialisation, no pickle), `paths.json` (the image of each row)
and `meta.json` (kind, dim, count, nlist/nprobe, the model checkpoint and tokenizer, vitlab's version and the
SHA-256 of index.faiss, checked before faiss reads the bytes so a damaged file is one error, not a crash).

Recall@K on a caption file (`index_recall`) counts hits with the evaluator's own rule
(`vitlab.engine.evaluators.clip.recall_from_hits`): text -> image searches this index with each distinct caption;
image -> text searches the distinct captions exactly. With a flat index over the caption file's images (one caption
each) it equals `retrieval_recall` of the CLIP evaluator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import nn

from vitlab import __version__
from vitlab.data import ImageTransform, read_image
from vitlab.data.tokenizer import ClipTokenizer
from vitlab.engine.evaluators.clip import KS, recall_from_hits
from vitlab.errors import ConfigError, DataError
from vitlab.weights.io import atomic_write

log = logging.getLogger(__name__)

INDEX_FILE, PATHS_FILE, META_FILE = "index.faiss", "paths.json", "meta.json"
KINDS = ("auto", "flat", "ivf")
IVF_THRESHOLD = 100_000  # `auto` switches to IVF here: flat search of 10^5 vectors already costs ~10 ms a query
TRAIN_POINTS_PER_CELL = 64  # IVF k-means sample per cell
MIN_POINTS_PER_CELL = 39  # faiss's k-means asks for at least 39 training points per centroid


def default_nlist(n: int) -> int:
    """~4 sqrt(N) IVF cells (faiss's guideline), at most N / 39 so every centroid has the training points it needs."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_CELL))


def normalise(x: np.ndarray | torch.Tensor, what: str = "embeddings") -> np.ndarray:
    """(N, D) float32, C-contiguous, each row of unit L2 norm; a zero or non-finite row is an error."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{what} must be (N, D), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.isfinite(x).all() or (norms == 0).any():
        raise ValueError(f"{what}: every row must be finite and non-zero")
    return x / norms


@dataclass
class IndexMeta:
    kind: str  # "flat" or "ivf"
    dim: int  # embedding width E
    count: int  # indexed vectors N
    nlist: int  # IVF cells (0 for flat)
    nprobe: int  # IVF cells a query visits by default (0 for flat)
    checkpoint: str | None  # the model that made the embeddings: queries must use the same one
    model: str | None
    tokenizer: str | None  # the run's BPE vocabulary (None: CLIP's installed one)
    vitlab_version: str = __version__
    metric: str = "inner_product"  # on unit vectors: cosine similarity
    sha256: str = ""  # of index.faiss


class ImageIndex:
    """A faiss index over unit-norm embeddings (rows in `paths` order) with its metadata."""

    def __init__(self, index: faiss.Index, paths: list[str], meta: IndexMeta) -> None:
        self.index, self.paths, self.meta = index, paths, meta

    @classmethod
    def build(
        cls, embeddings: np.ndarray | torch.Tensor, paths: Sequence[str], kind: str = "auto", nlist: int | None = None,
        nprobe: int = 16, checkpoint: str | None = None, model: str | None = None, tokenizer: str | None = None,
        seed: int = 0,
    ) -> ImageIndex:  # fmt: skip
        if kind not in KINDS:
            raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
        x = normalise(embeddings)
        N, D = x.shape
        if len(paths) != N:
            raise ValueError(f"{N} embeddings but {len(paths)} paths")
        if kind == "auto":
            kind = "ivf" if N >= IVF_THRESHOLD else "flat"
        if kind == "flat":
            index, nlist, nprobe = faiss.IndexFlatIP(D), 0, 0
        else:
            nlist = nlist or default_nlist(N)
            if not 1 <= nlist <= N:
                raise ConfigError(f"--nlist must be in [1, {N}] (the vectors indexed), got {nlist}")
            if nprobe < 1:
                raise ConfigError(f"--nprobe must be >= 1, got {nprobe}")
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed  # k-means initialisation: the same vectors give the same cells
            index.cp.min_points_per_centroid = 1  # nlist is chosen above; faiss need not warn about it
            # k-means on a random sample of 64 vectors per cell (faiss's guideline: 30-256): 10^6 vectors in 4,000
            # cells train on 256k, a quarter of faiss's default sample (256 per cell)
            index.cp.max_points_per_centroid = TRAIN_POINTS_PER_CELL
            index.train(x)
            index.nprobe = nprobe = min(nprobe, nlist)
        index.add(x)
        meta = IndexMeta(kind, D, N, nlist, nprobe, checkpoint, model, tokenizer)
        return cls(index, [str(p) for p in paths], meta)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray | torch.Tensor, k: int, nprobe: int | None = None):
        """(scores (Q, k'), ids (Q, k')) best first, k' = min(k, N); an IVF search visiting too few cells to fill k'
        pads with id -1 and score -inf."""
        if k < 1:
            raise ConfigError(f"-k must be >= 1, got {k}")
        q = normalise(queries, "queries")
        if q.shape[1] != self.meta.dim:
            raise ConfigError(f"queries have width {q.shape[1]} but the index holds {self.meta.dim}-wide embeddings")
        params = None
        if self.meta.kind == "ivf":
            nprobe = self.meta.nprobe if nprobe is None else nprobe
            if nprobe < 1:
                raise ConfigError(f"--nprobe must be >= 1, got {nprobe}")
            params = faiss.SearchParametersIVF(nprobe=min(nprobe, self.meta.nlist))
        scores, ids = self.index.search(q, min(k, len(self)), params=params)
        scores[ids < 0] = -np.inf
        return scores, ids

    def vectors(self, ids: np.ndarray | None = None) -> np.ndarray:
        """The stored unit vectors of rows `ids` (all rows by default), (len(ids), D)."""
        ids = np.arange(len(self)) if ids is None else np.asarray(ids, dtype=np.int64)
        if self.meta.kind == "ivf":
            faiss.extract_index_ivf(self.index).make_direct_map()  # id -> (cell, offset), for reconstruction
        return self.index.reconstruct_batch(ids)

    # ----- the directory on disk ---------------------------------------------------------------------------------
    def save(self, out: str | Path, overwrite: bool = False) -> None:
        """Write `out/` (index.faiss, paths.json, meta.json), each file atomically; a directory holding an index is
        replaced only with `overwrite`, any other non-empty directory never."""
        out = Path(out)
        check_out(out, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        data = faiss.serialize_index(self.index).tobytes()
        self.meta.sha256 = hashlib.sha256(data).hexdigest()
        atomic_write(out / INDEX_FILE, lambda tmp: Path(tmp).write_bytes(data))
        atomic_write(out / PATHS_FILE, lambda tmp: Path(tmp).write_text(json.dumps(self.paths, indent=0)))
        # meta.json last: a directory without it (a crash mid-write) is not taken for an index
        atomic_write(out / META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(asdict(self.meta), indent=2) + "\n"))

    @classmethod
    def load(cls, directory: str | Path) -> ImageIndex:
        d = Path(directory)
        if not d.exists():
            raise DataError(f"index {d} does not exist; build it with `vitlab index build --out {d} ...`")
        if not d.is_dir():
            raise DataError(f"index {d} is a file; an index is the directory `vitlab index build --out` writes")
        meta = _read_meta(d / META_FILE)
        index = _read_faiss(d / INDEX_FILE, meta)
        paths = _read_paths(d / PATHS_FILE, meta.count)
        return cls(index, paths, meta)


def is_index(path: Path) -> bool:
    return (path / META_FILE).is_file()


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the index")
    if out.is_dir() and any(out.iterdir()):
        if not is_index(out):
            raise ConfigError(f"--out {out} is a non-empty directory that holds no vitlab index; give another --out")
        if not overwrite:
            raise ConfigError(f"--out {out} already holds an index; pass --overwrite to replace it")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {path.parent} is not a complete vitlab index (build it again)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read it as JSON ({e}); build the index again") from None


def _read_meta(path: Path) -> IndexMeta:
    raw = _read_json(path)
    fields = IndexMeta.__dataclass_fields__
    if not isinstance(raw, dict) or not {"kind", "dim", "count", "sha256"} <= set(raw):
        raise DataError(f"{path}: expected a JSON object with kind, dim, count and sha256 (not a vitlab index)")
    meta = IndexMeta(**{k: v for k, v in raw.items() if k in fields})
    if meta.kind not in ("flat", "ivf"):
        raise DataError(f"{path}: kind must be flat or ivf, got {meta.kind!r}")
    return meta


def _read_faiss(path: Path, meta: IndexMeta) -> faiss.Index:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {path.parent} is not a complete vitlab index (build it again)") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if hashlib.sha256(data).hexdigest() != meta.sha256:
        raise DataError(f"{path} is corrupt: its SHA-256 differs from the one in {META_FILE}; build the index again")
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as e:
        raise DataError(f"{path}: faiss cannot read it ({str(e).splitlines()[-1][:200]})") from None
    if index.d != meta.dim or index.ntotal != meta.count:
        raise DataError(f"{path} holds {index.ntotal} vectors of width {index.d}, {META_FILE} says "
                        f"{meta.count} of width {meta.dim}")  # fmt: skip
    return index


def _read_paths(path: Path, count: int) -> list[str]:
    paths = _read_json(path)
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise DataError(f"{path}: expected a JSON list of image paths")
    if len(paths) != count:
        raise DataError(f"{path} lists {len(paths)} images but the index holds {count} vectors")
    return paths


# ----- embeddings ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_images(
    model: nn.Module, paths: Sequence[str | Path], batch_size: int = 64, progress: bool = False
) -> torch.Tensor:
    """(N, E) float32 unit-norm image embeddings of image files, read and encoded `batch_size` at a time."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    tf = ImageTransform.for_model(model)
    out = []
    starts = range(0, len(paths), batch_size)
    for i in tqdm(starts, desc="encode", unit="batch", leave=False, disable=not progress):
        x = torch.stack([tf(read_image(p)) for p in paths[i : i + batch_size]]).to(device)
        out.append(model.encode_image(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.cfg.embed_dim)


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer: ClipTokenizer, texts: Sequence[str], batch_size: int = 256):
    """(M, E) float32 unit-norm text embeddings; each batch cut to its longest text, as the evaluator's batches."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[i : i + batch_size])).to(device)  # (b, context)
        out.append(model.encode_text(ids[:, : int(ids.ne(0).sum(1).max())]).float().cpu())
    return torch.cat(out)


# ----- recall@K on a caption file -------------------------------------------------------------------------------------
def index_recall(
    index: ImageIndex, text_embeds: np.ndarray | torch.Tensor, row_images: Sequence[int], row_captions: Sequence[int],
    ks: Sequence[int] = KS, nprobe: int | None = None,
) -> dict[str, float]:  # fmt: skip
    """Recall@K both ways through the index. text_embeds (M, E): the distinct captions; rows r = 1..R of a caption
    file: image row_images[r] (an index row) carries caption row_captions[r].

    image -> text, one query per caption-file row: a hit when the row's caption is among the K captions nearest to
    its image's stored vector (exact search over the M captions). text -> image, one query per distinct caption: a
    hit when one of the K images the index returns carries that caption in some row; index images without a
    caption are never hits (distractors)."""
    img = np.asarray(row_images, dtype=np.int64)
    cap = np.asarray(row_captions, dtype=np.int64)
    texts = normalise(text_embeds, "text embeddings")
    M, kmax = len(texts), max(ks)
    captions = faiss.IndexFlatIP(texts.shape[1])
    captions.add(texts)
    _, top = captions.search(np.ascontiguousarray(index.vectors(img)), min(kmax, M))  # (R, k) caption ids
    i2t = recall_from_hits(torch.from_numpy(top == cap[:, None]), ks)
    _, top = index.search(texts, kmax, nprobe=nprobe)  # (M, k) image rows
    pairs = np.unique(img * M + cap)  # (image, caption) pairs as one code each
    hit = np.isin(np.where(top >= 0, top * M + np.arange(M)[:, None], -1), pairs)
    t2i = recall_from_hits(torch.from_numpy(hit), ks)
    return {**{f"i2t_r{k}": v for k, v in i2t.items()}, **{f"t2i_r{k}": v for k, v in t2i.items()}}
