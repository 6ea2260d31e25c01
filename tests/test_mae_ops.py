"""MAE's pure pieces: random masking by shuffling, patchify/unpatchify, the masked MSE (hand-checked numbers)."""

from __future__ import annotations

import pytest
import torch

from vitlab.losses.mae import masked_mse
from vitlab.ops.masking import gather_tokens, num_visible, random_masking, unshuffle
from vitlab.ops.patchify import patchify, unpatchify


def test_masking_by_hand():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.4, 0.8, 0.6]])
    m = random_masking(noise, 0.5)  # keep the 2 smallest of each row
    assert m.ids_keep.tolist() == [[1, 3], [0, 1]]
    assert m.mask.tolist() == [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    # shuffle of row 0 is [1, 3, 2, 0]: patch 0 sits at place 3, patch 1 at 0, patch 2 at 2, patch 3 at 1
    assert m.ids_restore.tolist()[0] == [3, 0, 2, 1]


@pytest.mark.parametrize("N, ratio, keep", [(196, 0.75, 49), (16, 0.75, 4), (49, 0.75, 12), (10, 0.0, 10), (3, 0.9, 1)])
def test_mask_ratio_per_sample(N, ratio, keep):
    assert num_visible(N, ratio) == keep
    m = random_masking(torch.rand(5, N, generator=torch.Generator().manual_seed(N)), ratio)
    assert m.mask.sum(1).tolist() == [float(N - keep)] * 5  # every sample masks the same number
    assert m.ids_keep.shape == (5, keep)
    # the visible indices are exactly the zeros of the mask
    for row, keep_row in zip(m.mask, m.ids_keep, strict=True):
        assert sorted(keep_row.tolist()) == torch.nonzero(row == 0).flatten().tolist()


def test_ids_restore_round_trip():
    B, N, D = 3, 12, 5
    x = torch.randn(B, N, D)
    m = random_masking(torch.rand(B, N), 0.75)
    visible = gather_tokens(x, m.ids_keep)  # (B, K, D)
    token = torch.full((1, 1, D), 7.0)
    full = unshuffle(visible, token, m.ids_restore)  # (B, N, D) in patch order
    keep = (m.mask == 0)[:, :, None]
    assert torch.equal(torch.where(keep, full, x), x)  # visible tokens back at their own positions
    assert torch.equal(full[~keep.expand_as(full)], torch.full_like(full[~keep.expand_as(full)], 7.0))
    # with nothing masked, the unshuffle of the shuffle is the identity
    m0 = random_masking(torch.rand(B, N), 0.0)
    assert torch.equal(unshuffle(gather_tokens(x, m0.ids_keep), token, m0.ids_restore), x)


def test_masking_refuses_bad_input():
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(torch.rand(2, 4), 1.0)
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        random_masking(torch.rand(4), 0.5)


def test_patchify_layout_and_inverse():
    img = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)  # C=2, 4x4, p=2
    rows = patchify(img, 2)
    assert rows.shape == (1, 4, 8)
    # patch 0 = rows 0-1, columns 0-1; values (row, column, channel): c0 at (0,0)=0, c1 at (0,0)=16, then (0,1) ...
    assert rows[0, 0].tolist() == [0, 16, 1, 17, 4, 20, 5, 21]
    assert rows[0, 1, :2].tolist() == [2, 18]  # patch 1 is to the right of patch 0
    x = torch.randn(3, 3, 12, 8)
    assert torch.equal(unpatchify(patchify(x, 4), 4, (3, 2), 3), x)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.randn(1, 1, 5, 4), 2)


def test_masked_mse_by_hand():
    pred = torch.tensor([[[1.0, 1.0], [0.0, 2.0], [3.0, 3.0]]])  # (1, 3, 2)
    target = torch.zeros(1, 3, 2)
    # per-patch MSE: 1, 2, 9; mask the last two -> (2 + 9) / 2
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    assert masked_mse(pred=pred, target=target, mask=mask).item() == pytest.approx(5.5)
    # the visible patch does not count, whatever its prediction
    pred2 = pred.clone()
    pred2[0, 0] = 100.0
    assert masked_mse(pred=pred2, target=target, mask=mask).item() == pytest.approx(5.5)
    assert masked_mse(pred=pred, target=target, mask=torch.ones(1, 3)).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="do not match"):
        masked_mse(pred=pred, target=target, mask=torch.ones(1, 2))
