"""Box conversions, area, IoU and GIoU with hand-checked numbers."""

import torch

from vitlab.ops.boxes import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou


def test_conversions_hand_checked_and_round_trip():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.3, 0.0, 0.0]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.1, 0.3, 0.1, 0.3]]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    boxes = torch.rand(3, 5, 4)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes)


def test_area_and_iou_hand_checked():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    torch.testing.assert_close(box_area(b), torch.tensor([4.0, 4.0, 1.0]))
    iou, union = box_iou(a, b)
    # overlap 1x1 = 1, union 4 + 4 - 1 = 7; identical boxes; disjoint boxes
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 1.0, 0.0]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 4.0, 5.0]]))


def test_giou_hand_checked():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 1.0]])
    giou = generalized_box_iou(a, b)
    # enclosing 3x3 = 9: 1/7 - (9 - 7) / 9; identical: 1; disjoint: enclosing 4x2 = 8, union 5 -> 0 - 3/8
    torch.testing.assert_close(giou, torch.tensor([[1 / 7 - 2 / 9, 1.0, -3 / 8]]))


def test_degenerate_boxes_are_finite():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    inverted = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert box_area(inverted).item() == 0.0
    iou, _ = box_iou(point, point)
    assert iou.item() == 0.0
    giou = generalized_box_iou(point, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    assert torch.isfinite(giou).all() and abs(giou.item() - (-0.0)) < 1e-6  # enclosing == union: GIoU = IoU = 0
    p = torch.tensor([[0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    generalized_box_iou(p, torch.tensor([[0.0, 0.0, 0.2, 0.2]])).sum().backward()
    assert torch.isfinite(p.grad).all()


def test_giou_bounds_on_random_boxes():
    torch.manual_seed(0)
    b1 = box_cxcywh_to_xyxy(torch.rand(20, 4))
    b2 = box_cxcywh_to_xyxy(torch.rand(30, 4))
    giou = generalized_box_iou(b1, b2)
    iou, _ = box_iou(b1, b2)
    assert giou.shape == (20, 30)
    assert (giou <= iou + 1e-6).all() and (giou >= -1 - 1e-6).all() and (iou <= 1 + 1e-6).all()
    torch.testing.assert_close(generalized_box_iou(b2, b1), giou.T)
