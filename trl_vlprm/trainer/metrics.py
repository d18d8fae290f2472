"""Step-level metrics of a PRM: TRL's `compute_accuracy`, and accuracy and bad-step precision/recall/F1, overall and
per step type.

Both read `EvalPrediction.predictions` as TRL's PRMTrainer returned them: the class logits of every token,
`[rows, tokens, classes]` (2 classes, or 1 for a soft-label value head), with labels `[rows, tokens]` (-100 off step
ends).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from transformers import EvalPrediction

from trl_vlprm.trainer.tokenization import IGNORE_INDEX, STEP_TYPE_NAMES

logger = logging.getLogger(__name__)


def compute_accuracy(eval_pred: EvalPrediction) -> dict[str, float]:
    """TRL's `compute_accuracy` (the default metric of its former PRMTrainer), same inputs, same result.

    Token classification (predictions `[rows, tokens, classes]`): accuracy of the argmax class over tokens whose label
    is not -100. Pairwise rewards (predictions `[rows, 2]`, labels `[rows]`): how often the labelled option scores
    higher; ties are ignored with a warning.
    """
    predictions, labels = eval_pred
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim == 3:
        mask = labels != IGNORE_INDEX
        predictions = np.argmax(predictions, axis=2)[mask]
        labels = labels[mask]
    else:
        equal = predictions[:, 0] == predictions[:, 1]
        if equal.any():
            logger.warning(
                f"There are {int(equal.sum())} out of {len(predictions)} instances where the predictions for both "
                "options are equal. These instances are ignored in the accuracy computation."
            )
        predictions, labels = np.argmax(predictions[~equal], axis=1), labels[~equal]
    return {"accuracy": np.array(predictions == labels, dtype=float).mean().item()}


def precision_recall_f1(true_positive: int, false_positive: int, false_negative: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of one class from its counts; each is 0.0 where undefined (nothing predicted, nothing
    to find). The trainer's step metrics, the labelling quality and the process benches all use it.

    F1 = 2TP / (2TP + FP + FN), which equals 2PR / (P + R) wherever both are defined.
    """
    predicted, actual = true_positive + false_positive, true_positive + false_negative
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / actual if actual else 0.0
    f1 = 2 * true_positive / (predicted + actual) if predicted + actual else 0.0
    return precision, recall, f1


def correct_probabilities(logits: np.ndarray) -> np.ndarray:
    """P(step correct) from class logits `[..., classes]`: sigmoid of one logit, softmax's class 1 of two."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-logits[..., 0]))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted[..., 1] / shifted.sum(axis=-1)


def bad_step_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of step verdicts. A step is "bad" when its label (or predicted P(correct)) is below `threshold`.

    Returns:
        accuracy, bad_precision, bad_recall, bad_f1, num_steps and predicted_bad_share (0 or 1: a constant verdict).
        Precision/recall/F1 are 0 where undefined.
    """
    predicted_bad = probabilities < threshold
    actual_bad = labels < threshold
    precision, recall, f1 = precision_recall_f1(
        int(np.sum(predicted_bad & actual_bad)),
        int(np.sum(predicted_bad & ~actual_bad)),
        int(np.sum(~predicted_bad & actual_bad)),
    )
    return {
        "accuracy": float(np.mean(predicted_bad == actual_bad)) if len(labels) else 0.0,
        "bad_precision": precision,
        "bad_recall": recall,
        "bad_f1": f1,
        "num_steps": float(len(labels)),
        "predicted_bad_share": float(np.mean(predicted_bad)) if len(labels) else 0.0,
    }


def verdict_warnings(metrics: dict[str, float], prefix: str = "eval_") -> list[str]:
    """Warnings for evaluation metrics (`compute_step_metrics`, keys under `prefix`) that say the PRM learnt
    nothing usable: a constant verdict (every step called good, or every step bad) or a bad-step F1 of 0, overall and
    per step type. A loss curve hides both; `trl-vlprm check` and the evaluation would find them later."""
    out = []
    for kind in ("", "perception_", "reasoning_"):
        steps = metrics.get(f"{prefix}{kind}num_steps", 0)
        if not steps:
            continue
        name = f"{kind.rstrip('_')} steps" if kind else "steps"
        share, f1 = metrics.get(f"{prefix}{kind}predicted_bad_share"), metrics.get(f"{prefix}{kind}bad_f1", 0.0)
        if share in (0.0, 1.0):
            verdict = "bad" if share == 1.0 else "good"
            out.append(
                f"WARNING: constant verdict: the PRM calls all {int(steps)} held-out {name} {verdict} (a "
                "majority-class PRM: it learnt nothing it can rank with); see docs/training.md for settings a CPU PRM "
                "learns under"
            )
        elif f1 == 0.0:
            out.append(
                f"WARNING: held-out bad-step F1 is 0 on {int(steps)} {name}: the PRM finds none of the wrong steps; "
                "see docs/training.md for settings a CPU PRM learns under"
            )
    return out


def labelled_step_types(labels: np.ndarray, rows_step_types: Sequence[Sequence[int]]) -> np.ndarray | None:
    """Step type of every labelled position of `labels` `[rows, tokens]`, in row-major order, read from the rows'
    per-token `step_type_ids` (the evaluation dataset's column, same row order).

    Returns None (per-type metrics are then skipped with a warning) when the rows do not line up with the labels.
    """
    if len(rows_step_types) != len(labels):
        return None
    types = []
    for row_labels, row_types in zip(labels, rows_step_types):
        positions = np.flatnonzero(row_labels != IGNORE_INDEX)
        row_types = np.asarray(row_types)
        if len(positions) and positions[-1] >= len(row_types):
            return None
        kinds = row_types[positions]
        if (kinds == IGNORE_INDEX).any():  # a labelled position the dataset does not type: rows are misaligned
            return None
        types.append(kinds)
    return np.concatenate(types) if types else np.zeros(0, dtype=np.int64)


def compute_step_metrics(
    eval_prediction: EvalPrediction, step_types: Sequence[Sequence[int]] | None = None
) -> dict[str, float]:
    """Default `compute_metrics` of `VLPRMTrainer`.

    Args:
        eval_prediction: class logits `[rows, tokens, classes]` and labels `[rows, tokens]`.
        step_types: per-token step type ids of the same rows (`VLPRMTrainer` passes the evaluation dataset's
            `step_type_ids`); without them only the overall metrics are computed.

    Returns:
        `accuracy`, `bad_precision`, `bad_recall`, `bad_f1`, `num_steps` over all steps, then `perception_accuracy`,
        `reasoning_bad_f1`, ... for each step type present.
    """
    logits, labels = np.asarray(eval_prediction.predictions), np.asarray(eval_prediction.label_ids)
    mask = labels != IGNORE_INDEX
    probabilities, flat_labels = correct_probabilities(logits)[mask], labels[mask]
    metrics = bad_step_metrics(probabilities, flat_labels)
    if step_types is None:
        return metrics
    types = labelled_step_types(labels, step_types)
    if types is None:
        logger.warning("per-step-type metrics skipped: the evaluation rows do not line up with their step types")
        return metrics
    metrics.update(metrics_by_step_type(probabilities, flat_labels, types))
    return metrics


def metrics_by_step_type(probabilities: np.ndarray, labels: np.ndarray, types: np.ndarray) -> dict[str, float]:
    """`bad_step_metrics` of each step type present (`perception_accuracy`, `reasoning_bad_f1`, ...); `types` holds
    each step's type id (`STEP_TYPE_NAMES`)."""
    metrics = {}
    for type_id, name in STEP_TYPE_NAMES.items():
        of_type = types == type_id
        if of_type.any():
            for key, value in bad_step_metrics(probabilities[of_type], labels[of_type]).items():
                metrics[f"{name}_{key}"] = value
    return metrics
