"""Dataset preparation for `VLPRMTrainer`: checks, tokenization with counts of what truncation cut, and clear errors
for data that cannot train."""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset, Features, IterableDataset, List, Value

from trl_vlprm.data.schema import RecordError, validate_record
from trl_vlprm.modeling.encoding import is_vision_processor
from trl_vlprm.trainer import tokenization
from trl_vlprm.trainer.config import VLPRMConfig

# Warnings keep the trainer's logger name: users filter on it.
logger = logging.getLogger("trl_vlprm.trainer.vlprm_trainer")
_TOKENIZED_COLUMNS = ("input_ids", "labels", "step_type_ids", "mm_token_type_ids", "label_weights", "images", "id")
# Columns only this project's collator and metrics read: dropped when the user brings another collator (TRL's
# DataCollatorForTokenClassification pads every column it gets).
_BOOKKEEPING_COLUMNS = ("step_type_ids", "label_weights", "id")
_COUNT_COLUMNS = ["num_steps_dropped", "prompt_too_long", "num_labels"]
# The row's number in the user's file, when a loader added it (`trl-vlprm train`): errors name that row, not its
# position after rows were filtered out or split off for evaluation.
SOURCE_ROW = "source_row"


def _tokenize(example: dict[str, Any], index: int, processing_class: Any, args: VLPRMConfig, is_eval: bool):
    index = example.get(SOURCE_ROW, index)
    validate_record(example, index, check_images=False)  # images are decoded during tokenization anyway
    if not example.get("completions"):
        raise RecordError(index, "completions", "a training row needs at least one step")
    if not args.use_label_weights:
        example = {k: v for k, v in example.items() if k != "label_weights"}
    return tokenization.tokenize_row(
        example,
        processing_class,
        step_separator=args.step_separator,
        max_length=args.max_length,
        max_completion_length=args.max_completion_length,
        train_on_last_step_only=args.train_on_last_step_only,
        is_eval=is_eval,
        row=example.get("id") or index,
        step_truncation=args.step_truncation,
        long_prompt=args.long_prompt,
        layout=args.layout,
    )


def prepare_dataset(
    dataset: Dataset, processing_class: Any, args: VLPRMConfig, name: str, is_eval: bool, keep_bookkeeping: bool
) -> Dataset:
    """Tokenize records (datasets with `input_ids` pass through), log what truncation cut, remove rows left without a
    labelled step, and raise when none is left. `keep_bookkeeping=False` drops the columns only this project's
    collator reads."""
    if "input_ids" in dataset.column_names:
        return dataset
    kept = [c for c in dataset.column_names if c in _TOKENIZED_COLUMNS and c != "label_weights"]
    # Declared so map does not cast the new integer/float labels back to the source's bool feature.
    features = {c: dataset.features[c] for c in kept} if dataset.features is not None else {}
    features.update(
        input_ids=List(Value("int64")),
        labels=List(Value("float32")),
        step_type_ids=List(Value("int64")),
        **{column: Value("int64") for column in _COUNT_COLUMNS},
    )
    if "label_weights" in dataset.column_names and args.use_label_weights:
        features["label_weights"] = List(Value("float32"))  # per token now: replaces the per-step source column
    if is_vision_processor(processing_class):
        features["mm_token_type_ids"] = List(Value("int64"))
    with args.main_process_first(desc=f"tokenizing {name} dataset"):
        tokenized = dataset.map(
            _tokenize,
            with_indices=True,
            fn_kwargs={"processing_class": processing_class, "args": args, "is_eval": is_eval},
            num_proc=args.dataset_num_proc,
            remove_columns=[c for c in dataset.column_names if c not in kept],
            features=Features(features),
            desc=f"Tokenizing {name} dataset",
        )
    _log_truncation(tokenized, name, args)
    labelled = tokenized.filter(lambda n: n > 0, input_columns="num_labels", num_proc=args.dataset_num_proc)
    if len(labelled) == 0:
        raise ValueError(
            f"{name} dataset: none of its {len(tokenized)} row(s) keeps a labelled step after tokenization "
            f"(max_length={args.max_length}, max_completion_length={args.max_completion_length}); raise them "
            "or lower max_pixels"
        )
    if len(labelled) < len(tokenized):
        logger.warning(
            "%s dataset: %d row(s) kept no labelled step after truncation and are removed",
            name,
            len(tokenized) - len(labelled),
        )
    labelled = labelled.remove_columns(_COUNT_COLUMNS)
    if not keep_bookkeeping:
        labelled = labelled.remove_columns([c for c in _BOOKKEEPING_COLUMNS if c in labelled.column_names])
    return labelled


def named_datasets(eval_dataset) -> list[tuple[str, Any]]:
    if eval_dataset is None:
        return []
    if isinstance(eval_dataset, dict):
        return [(f"eval_dataset[{k!r}]", v) for k, v in eval_dataset.items()]
    return [("eval_dataset", eval_dataset)]


def check_dataset(name: str, dataset: Any, required: bool) -> None:
    if dataset is None:
        if required:
            raise ValueError(f"`{name}` is required")
        return
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            f"`{name}` is an IterableDataset, which VLPRMTrainer does not take: it counts, filters and validates rows "
            "up front. Load it without `streaming=True` (datasets memory-maps it from disk), or tokenize it yourself "
            "and pass a map-style dataset."
        )
    if not isinstance(dataset, Dataset):
        raise TypeError(f"`{name}` must be a datasets.Dataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty (0 rows)")


def _log_truncation(tokenized: Dataset, name: str, args: VLPRMConfig) -> None:
    dropped, long_prompts = sum(tokenized["num_steps_dropped"]), sum(tokenized["prompt_too_long"])
    if long_prompts:
        logger.warning(
            "%s dataset: %d row(s) have a prompt (image tokens included) longer than max_length=%s; long_prompt="
            "'truncate' cuts them, so they keep no label and are removed (set long_prompt='error' to stop instead)",
            name,
            long_prompts,
            args.max_length,
        )
    if dropped:
        how = (
            "cut at the token budget (their labels with them)" if args.step_truncation == "tokens" else "dropped whole"
        )
        logger.warning(
            "%s dataset: %d trailing step(s) did not fit max_length=%s / max_completion_length=%s and were %s",
            name,
            dropped,
            args.max_length,
            args.max_completion_length,
            how,
        )


def has_images(dataset: Dataset) -> bool:
    """True when the dataset's first rows hold images: enough to tell an image dataset from a text one without
    decoding them all."""
    if "images" not in (dataset.column_names or []):
        return False
    return any(dataset.select_columns("images")[: min(len(dataset), 16)]["images"])


def has_soft_labels(dataset) -> bool:
    if "labels" not in dataset.column_names:
        return False
    feature = dataset.features["labels"]
    inner = getattr(feature, "feature", None)
    if inner is not None and getattr(inner, "dtype", "") == "bool":
        return False
    soft = False
    for index, labels in enumerate(dataset["labels"]):
        for i, label in enumerate(labels or []):
            if isinstance(label, str) or label is None:  # e.g. "True" from a CSV: name the row, do not guess
                raise RecordError(index, "labels", f"label {i} is {label!r}; expected a bool or a float in [0, 1]")
            soft = soft or float(label) not in (0.0, 1.0)
    return soft
