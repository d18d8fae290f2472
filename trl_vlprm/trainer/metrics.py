"""Step-level metrics of a PRM, overall and per step type: accuracy and precision/recall/F1 of the bad-step class."""

from __future__ import annotations

import numpy as np
from transformers import EvalPrediction

from trl_vlprm.trainer.tokenization import IGNORE_INDEX, STEP_TYPE_NAMES


def bad_step_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of step verdicts. A step is "bad" when its label (or predicted P(correct)) is below `threshold`.

    Returns:
        accuracy, bad_precision, bad_recall, bad_f1 and num_steps. Precision/recall/F1 are 0 where undefined.
    """
    predicted_bad = probabilities < threshold
    actual_bad = labels < threshold
    true_positive = float(np.sum(predicted_bad & actual_bad))
    precision = true_positive / max(float(np.sum(predicted_bad)), 1.0)
    recall = true_positive / max(float(np.sum(actual_bad)), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "accuracy": float(np.mean(predicted_bad == actual_bad)) if len(labels) else 0.0,
        "bad_precision": precision,
        "bad_recall": recall,
        "bad_f1": f1,
        "num_steps": float(len(labels)),
    }


def compute_step_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """`compute_metrics` of `VLPRMTrainer`: predictions are (P(correct) per token, step type per token).

    Keys: `accuracy`, `bad_f1`, ... over all steps, then `perception_accuracy`, `reasoning_bad_f1`, ... per type
    present in the evaluation set.
    """
    probabilities, step_types = eval_prediction.predictions
    labels = eval_prediction.label_ids
    mask = labels != IGNORE_INDEX
    probabilities, step_types, labels = probabilities[mask], step_types[mask], labels[mask]
    metrics = bad_step_metrics(probabilities, labels)
    for type_id, name in STEP_TYPE_NAMES.items():
        of_type = step_types == type_id
        if of_type.any():
            for key, value in bad_step_metrics(probabilities[of_type], labels[of_type]).items():
                metrics[f"{name}_{key}"] = value
    return metrics
