"""Segmentation metrics: Dice, IoU, mean IoU over classes, and AJI for instance masks."""

from __future__ import annotations

import numpy as np


def _check(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of foreground (non-zero) pixels; 1.0 when both are empty."""
    _check(pred, truth)
    p, t = pred > 0, truth > 0
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(p, t).sum() / denom)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of foreground (non-zero) pixels; 1.0 when both are empty."""
    _check(pred, truth)
    p, t = pred > 0, truth > 0
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def mean_iou(pred: np.ndarray, truth: np.ndarray, classes: list[int] | None = None) -> float:
    """IoU averaged over the classes in ``truth`` (or ``classes``), background included."""
    _check(pred, truth)
    classes = classes if classes is not None else [int(c) for c in np.unique(truth)]
    scores = []
    for c in classes:
        p, t = pred == c, truth == c
        union = np.logical_or(p, t).sum()
        if union:
            scores.append(np.logical_and(p, t).sum() / union)
    return float(np.mean(scores)) if scores else 1.0


def aji(pred: np.ndarray, truth: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017) of two instance label images (0 = background).

    Each true instance is matched to the predicted instance of highest IoU; the intersections
    over the unions are aggregated, and unmatched predicted instances add to the union.
    """
    _check(pred, truth)
    true_ids = [i for i in np.unique(truth) if i]
    pred_ids = [i for i in np.unique(pred) if i]
    if not true_ids:
        return 1.0 if not pred_ids else 0.0
    # contingency table of overlaps between true and predicted instances
    t_index = np.searchsorted(true_ids, truth[truth > 0])
    pairs = np.stack([truth.ravel(), pred.ravel()], 1)
    pairs = pairs[pairs[:, 0] > 0]
    t_idx = np.searchsorted(true_ids, pairs[:, 0])
    p_mask = pairs[:, 1] > 0
    p_idx = np.searchsorted(pred_ids, pairs[p_mask, 1]) if pred_ids else np.zeros(0, int)
    overlap = np.zeros((len(true_ids), max(1, len(pred_ids))), dtype=np.int64)
    if pred_ids:
        np.add.at(overlap, (t_idx[p_mask], p_idx), 1)
    t_area = np.bincount(t_index, minlength=len(true_ids))
    p_area = (
        np.bincount(np.searchsorted(pred_ids, pred[pred > 0]), minlength=len(pred_ids))
        if pred_ids
        else np.zeros(1, int)
    )
    union = t_area[:, None] + p_area[None, :] - overlap
    used = np.zeros(len(p_area), bool)
    inter_sum = union_sum = 0
    for i in range(len(true_ids)):
        if pred_ids and overlap[i].max() > 0:
            j = int(np.argmax(overlap[i] / union[i]))
            inter_sum += overlap[i, j]
            union_sum += union[i, j]
            used[j] = True
        else:
            union_sum += t_area[i]
    if pred_ids:
        union_sum += p_area[~used].sum()
    return float(inter_sum / union_sum) if union_sum else 1.0
