"""`VLPRMTrainer`: process reward model training on images + steps, with TRL's PRMTrainer conventions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset, Features, IterableDataset, List, Value
from transformers import EvalPrediction, PreTrainedModel, Trainer, TrainerCallback
from trl.trainer.utils import disable_dropout_in_model

from trl_vlprm.data.schema import RecordError, validate_record
from trl_vlprm.modeling.heads import correct_probability, load_prm, prm_token_ids, step_logits
from trl_vlprm.modeling.processor import get_tokenizer, load_processor, require_image_support
from trl_vlprm.trainer.collator import DataCollatorForVLPRM
from trl_vlprm.trainer.config import VLPRMConfig
from trl_vlprm.trainer.metrics import compute_step_metrics
from trl_vlprm.trainer.tokenization import IGNORE_INDEX, PERCEPTION, STEP_TYPE_IDS, is_vision_processor, tokenize_row

logger = logging.getLogger(__name__)
_TOKENIZED_COLUMNS = ("input_ids", "labels", "step_type_ids", "mm_token_type_ids", "images", "id")


def _tokenize(example: dict[str, Any], index: int, processing_class: Any, args: VLPRMConfig, is_eval: bool):
    validate_record(example, index, check_images=False)  # images are decoded during tokenization anyway
    if not example.get("completions"):
        raise RecordError(index, "completions", "a training row needs at least one step")
    return tokenize_row(
        example,
        processing_class,
        step_separator=args.step_separator,
        max_length=args.max_length,
        max_completion_length=args.max_completion_length,
        train_on_last_step_only=args.train_on_last_step_only,
        is_eval=is_eval,
        row=example.get("id") or index,
    )


class VLPRMTrainer(Trainer):
    """Train a (vision-language) process reward model.

    Args:
        model (`PreTrainedModel` or `str`):
            The PRM, or a local folder or Hub repo id loaded with `load_prm(name, head=args.head)` (value head: 2
            classes, or 1 when the training labels are soft; `model_init_kwargs` may hold its `revision`).
        args (`VLPRMConfig`): training configuration.
        data_collator (*optional*): defaults to `DataCollatorForVLPRM(processing_class)`.
        train_dataset (`datasets.Dataset`): stepwise-supervision records (`prompt`, `images`, `completions`,
            `labels`, optional `step_types`); already-tokenized datasets (with `input_ids`) are used as they are.
        eval_dataset (`datasets.Dataset` or dict of them, *optional*): same format.
        processing_class (*optional*): tokenizer (text PRMs) or image-only processor; loaded from `model`'s path
            when `model` is a string.
        compute_metrics (*optional*): defaults to `compute_step_metrics` (accuracy and bad-step
            precision/recall/F1, overall and per step type).
        callbacks, optimizers, preprocess_logits_for_metrics: as in `transformers.Trainer`.
        peft_config (`peft.PeftConfig`, *optional*): wrap the model with PEFT (e.g. LoRA); a value head's `score`
            layer is added to `modules_to_save` so it trains and saves in full.
    """

    _tag_names = ["trl", "prm", "trl_vlprm"]

    def __init__(
        self,
        model: PreTrainedModel | str,
        args: VLPRMConfig,
        data_collator: Callable | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        peft_config: Any = None,
    ):
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        if isinstance(model, str):  # a folder or a Hub repo id (revision in `model_init_kwargs`)
            init_kwargs = args.model_init_kwargs or {}
            processing_class = processing_class or load_processor(
                model, args.min_pixels, args.max_pixels, revision=init_kwargs.get("revision")
            )
            num_labels = 1 if _has_soft_labels(train_dataset) else 2
            model = load_prm(model, head=args.head, num_labels=num_labels, **init_kwargs)
        if processing_class is None:
            raise ValueError("`processing_class` is required when `model` is not a path")
        if _has_images(train_dataset):
            require_image_support(processing_class, model.config.model_type, "VLPRMTrainer")
        self.head = args.head
        self.prm_token_ids = prm_token_ids(get_tokenizer(processing_class)) if args.head == "generative" else None
        _record_prm_metadata(model, args, self.prm_token_ids)

        if args.freeze_vision_tower:
            _freeze_vision_tower(model)
        if peft_config is not None:
            model = _wrap_peft(model, peft_config, args)
        if args.disable_dropout:
            disable_dropout_in_model(model)

        train_dataset = self._prepare(train_dataset, processing_class, args, "train", is_eval=False)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepare(v, processing_class, args, k, True) for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self._prepare(eval_dataset, processing_class, args, "eval", is_eval=True)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or DataCollatorForVLPRM(processing_class),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics or compute_step_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # The loss is a per-batch mean over labelled steps computed here, not by the model.
        self.model_accepts_loss_kwargs = False
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    @staticmethod
    def _prepare(dataset, processing_class, args: VLPRMConfig, name: str, is_eval: bool):
        if "input_ids" in dataset.column_names:
            return dataset
        kept = [c for c in dataset.column_names if c in _TOKENIZED_COLUMNS]
        # Declared so map does not cast the new integer/float labels back to the source's bool feature.
        features = {c: dataset.features[c] for c in kept} if dataset.features is not None else {}
        features.update(
            input_ids=List(Value("int64")),
            labels=List(Value("float32")),
            step_type_ids=List(Value("int64")),
            num_steps_dropped=Value("int64"),
            num_labels=Value("int64"),
        )
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
        dropped = sum(tokenized["num_steps_dropped"])
        if dropped:
            logger.warning(
                "%s dataset: %d trailing step(s) did not fit max_length=%s / max_completion_length=%s and were "
                "dropped whole",
                name,
                dropped,
                args.max_length,
                args.max_completion_length,
            )
        labelled = tokenized.filter(lambda n: n > 0, input_columns="num_labels", num_proc=args.dataset_num_proc)
        if len(labelled) < len(tokenized):
            logger.warning(
                "%s dataset: %d row(s) kept no labelled step after truncation and are removed",
                name,
                len(tokenized) - len(labelled),
            )
        return labelled.remove_columns(["num_steps_dropped", "num_labels"])

    def _class_logits(self, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = model(**inputs, use_cache=False)
        return step_logits(outputs.logits, self.head, self.prm_token_ids)

    def step_losses(self, class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-step loss at labelled positions (flattened): BCE for one class, soft-target CE for two.

        With hard labels, soft-target CE with targets (1 - y, y) is exactly the usual cross-entropy.
        """
        mask = labels != IGNORE_INDEX
        logits, targets = class_logits[mask].float(), labels[mask].float()
        if logits.shape[-1] == 1:
            return F.binary_cross_entropy_with_logits(logits[:, 0], targets, reduction="none")
        log_probs = torch.log_softmax(logits, dim=-1)
        return -(targets * log_probs[:, 1] + (1 - targets) * log_probs[:, 0])

    def step_weights(self, step_type_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss weight of each labelled step: `perception_loss_weight` for perception steps, 1 otherwise."""
        types = step_type_ids[labels != IGNORE_INDEX]
        weights = torch.ones_like(types, dtype=torch.float)
        weights[types == STEP_TYPE_IDS[PERCEPTION]] = self.args.perception_loss_weight
        return weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        step_type_ids = inputs.pop("step_type_ids")
        class_logits = self._class_logits(model, inputs)
        losses = self.step_losses(class_logits, labels)
        weights = self.step_weights(step_type_ids, labels)
        # Weighted sum over the count of labelled steps (not over the weights): the weight is a pure multiplier.
        loss = (losses * weights).sum() / max(losses.numel(), 1)
        if return_outputs:
            return loss, {"class_logits": class_logits}
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        labels, step_type_ids = inputs["labels"], inputs["step_type_ids"]
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, dict(inputs), return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        probabilities = correct_probability(outputs["class_logits"])
        return loss.detach(), (probabilities, step_type_ids), labels


def _has_images(dataset) -> bool:
    # Only the first rows are read: enough to tell an image dataset from a text one without decoding them all.
    if "images" not in (dataset.column_names or []) or isinstance(dataset, IterableDataset):
        return False
    return any(dataset.select_columns("images")[: min(len(dataset), 16)]["images"])


def _has_soft_labels(dataset) -> bool:
    if "labels" not in dataset.column_names or isinstance(dataset, IterableDataset):
        return False
    feature = dataset.features["labels"]
    inner = getattr(feature, "feature", None)
    if inner is not None and getattr(inner, "dtype", "") == "bool":
        return False
    return any(float(x) not in (0.0, 1.0) for labels in dataset["labels"] for x in labels)


def _record_prm_metadata(model: PreTrainedModel, args: VLPRMConfig, token_ids: tuple[int, int] | None) -> None:
    # Saved with the checkpoint so scoring reads steps exactly as training labelled them.
    model.config.prm_head = args.head
    model.config.prm_step_separator = args.step_separator
    if token_ids is not None:
        model.config.prm_positive_token_id, model.config.prm_negative_token_id = token_ids


def _freeze_vision_tower(model: PreTrainedModel) -> int:
    frozen = 0
    for name, parameter in model.named_parameters():
        if ".visual." in f".{name}" and ".merger." not in name:
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    if frozen == 0:
        raise ValueError("freeze_vision_tower=True but the model has no vision tower (`visual`) parameters")
    return frozen


def _wrap_peft(model: PreTrainedModel, peft_config: Any, args: VLPRMConfig):
    from peft import get_peft_model

    if args.head == "value":
        peft_config.modules_to_save = sorted(set(peft_config.modules_to_save or []) | {"score"})
    if args.gradient_checkpointing or getattr(args, "activation_checkpointing", False):
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config)
