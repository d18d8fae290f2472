"""`VLPRMTrainer`: process reward model training on images + steps, keeping TRL's former PRMTrainer contract."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import EvalPrediction, PreTrainedModel, Trainer, TrainerCallback, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.trainer.utils import disable_dropout_in_model

from trl_vlprm.data.schema import PERCEPTION
from trl_vlprm.modeling import readout
from trl_vlprm.modeling.families import family_of_model
from trl_vlprm.modeling.heads import load_prm, prm_token_ids
from trl_vlprm.modeling.processor import get_tokenizer, load_processor, require_image_support
from trl_vlprm.trainer import tokenization
from trl_vlprm.trainer.collator import DataCollatorForVLPRM
from trl_vlprm.trainer.config import VLPRMConfig
from trl_vlprm.trainer.data_preparation import (
    check_dataset,
    has_images,
    has_soft_labels,
    named_datasets,
    prepare_dataset,
)
from trl_vlprm.trainer.metrics import compute_step_metrics
from trl_vlprm.trainer.model_card import PAPER, generate_model_card
from trl_vlprm.trainer.tokenization import IGNORE_INDEX, STEP_TYPE_IDS

logger = logging.getLogger(__name__)


class VLPRMTrainer(Trainer):
    """Train a (vision-language) process reward model. Same arguments, in the same order, as TRL's former
    `PRMTrainer`.

    Args:
        model (`PreTrainedModel` or `str`, *optional*):
            The PRM, or a local folder or Hub repo id loaded with `load_prm(name, head=args.head)` (value head: 2
            classes, or 1 when the training labels are soft; `model_init_kwargs` may hold its `revision`), after
            seeding with `args.seed` so a new head starts the same every run.
        args (`VLPRMConfig`, *optional*): training configuration (default: `VLPRMConfig("<model name>-VLPRM")`).
        data_collator (*optional*): defaults to `DataCollatorForVLPRM(processing_class)`. Another collator (e.g.
            TRL's `DataCollatorForTokenClassification` for text PRMs) gets the rows without this project's
            bookkeeping columns (`step_type_ids`, `label_weights`, `id`).
        train_dataset (`datasets.Dataset`): stepwise-supervision records (`prompt`, `images`, `completions`,
            `labels`, optional `step_types`, `label_weights`); already-tokenized datasets (with `input_ids`) are used
            as they are. An `IterableDataset` is refused (the trainer counts and filters rows up front).
        eval_dataset (`datasets.Dataset` or dict of them, *optional*): same format.
        processing_class (*optional*): tokenizer (text PRMs) or image-only processor; loaded from `model`'s path
            when `model` is a string. Needed to tokenize records and by the default collator only.
        model_init (`Callable[[], PreTrainedModel]`, *optional*): as in `transformers.Trainer`; the model it returns
            gets the same preparation (PEFT, dropout, frozen vision tower) as `model`.
        compute_metrics (*optional*): defaults to `compute_step_metrics` (accuracy and bad-step
            precision/recall/F1, overall and per step type). Like TRL's, it receives `EvalPrediction` with the class
            logits of every token as `predictions`, so TRL's `compute_accuracy` works unchanged.
        callbacks, optimizers, preprocess_logits_for_metrics: as in `transformers.Trainer`.
        peft_config (`peft.PeftConfig`, *optional*): wrap the model with PEFT (e.g. LoRA); a value head's `score`
            layer is added to `modules_to_save` so it trains and saves in full.
    """

    _tag_names = ["trl", "prm", "trl_vlprm"]
    _name = "VL-PRM"
    _paper = PAPER

    def __init__(
        self,
        model: PreTrainedModel | str | None = None,
        args: VLPRMConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: Any = None,
        model_init: Callable[[], PreTrainedModel] | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        peft_config: Any = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
            args = VLPRMConfig(output_dir=f"{Path(str(name or 'model')).name}-VLPRM")
        check_dataset("train_dataset", train_dataset, required=True)
        for name, dataset in named_datasets(eval_dataset):
            check_dataset(name, dataset, required=False)
        if peft_config is not None:
            from peft import PeftConfig

            if not isinstance(peft_config, PeftConfig):
                raise TypeError(
                    "`peft_config` must be a `peft.PeftConfig` instance (e.g. `peft.LoraConfig`), "
                    f"got {type(peft_config).__name__}."
                )
        if isinstance(model, str):  # a folder or a Hub repo id (revision in `model_init_kwargs`)
            init_kwargs = args.model_init_kwargs or {}
            processing_class = processing_class or load_processor(
                model, args.min_pixels, args.max_pixels, revision=init_kwargs.get("revision")
            )
            num_labels = 1 if has_soft_labels(train_dataset) else 2
            set_seed(args.seed)  # a new value head is drawn from the RNG: same seed, same start
            model = load_prm(model, head=args.head, num_labels=num_labels, **init_kwargs)
        if model is None and model_init is None:
            raise ValueError("`VLPRMTrainer` requires either a `model` or a `model_init` argument")
        if model is not None and processing_class is not None and has_images(train_dataset):
            require_image_support(processing_class, model.config.model_type, "VLPRMTrainer")
        needs_tokenizing = any(
            "input_ids" not in d.column_names for _, d in named_datasets(eval_dataset) + [("train", train_dataset)]
        )
        if processing_class is None and (needs_tokenizing or data_collator is None):
            raise ValueError(
                "A `processing_class` must be specified to tokenize records and for the default collator; without "
                "one, pass a pretokenized dataset (`input_ids`, `labels`) and a `data_collator`"
            )
        self.head = args.head
        self.prm_token_ids = _generative_token_ids(model, processing_class) if args.head == "generative" else None
        if self.prm_token_ids is not None and model is not None:
            readout.check_verdict_tokens(
                model, self.prm_token_ids, (args.layout.positive_token, args.layout.negative_token)
            )
        self._peft_config = peft_config
        self._prepare_args = args  # read by `call_model_init`, which Trainer.__init__ may call before `self.args`
        if model is not None:
            model = self._prepare_model(model)

        own_collator = data_collator is None or isinstance(data_collator, DataCollatorForVLPRM)
        prepare = {"processing_class": processing_class, "args": args, "keep_bookkeeping": own_collator}
        train_dataset = prepare_dataset(train_dataset, name="train", is_eval=False, **prepare)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: prepare_dataset(v, name=k, is_eval=True, **prepare) for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = prepare_dataset(eval_dataset, name="eval", is_eval=True, **prepare)

        self._metric_dataset = None  # the dataset being evaluated, whose step types feed per-type metrics
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or DataCollatorForVLPRM(processing_class),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics or self._step_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # The loss is a per-batch mean over labelled steps computed here, not by the model.
        self.model_accepts_loss_kwargs = False
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    @staticmethod
    def tokenize_row(
        features,
        tokenizer,
        step_separator,
        max_length,
        max_completion_length,
        train_on_last_step_only,
        is_eval,
    ):
        r"""Tokenize a row as TRL's former `PRMTrainer.tokenize_row` did (same signature, same output).

        Truncation is at the token budget: the completion to `max_completion_length`, then the row to `max_length`.
        (The trainer can instead drop trailing steps whole: `VLPRMConfig.step_truncation="whole_steps"`.) With a
        vision processor the prompt goes through the chat template with its image tokens, and `mm_token_type_ids` is
        returned too.

        Example:
        ```python
        >>> features = {"prompt": "Which number is larger, 9.8 or 9.11?",
        ...             "completions": ["11 is greater than 8.", "Hence, 9.11 > 9.8."], "labels": [True, False]}
        >>> VLPRMTrainer.tokenize_row(features, tokenizer, "\n", None, None, False, False)  # Qwen2.5 tokenizer
        {'input_ids': [23085, 1372, 374, 8131, 11, 220, 24, 13, 23, 476, 220, 24, 13, 16, 16, 30, 16, 16, 374, 7046,
                       1091, 220, 23, 13, 198, 39, 763, 11, 220, 24, 13, 16, 16, 861, 220, 24, 13, 23, 13, 198],
         'labels': [-100, ..., -100, 1, -100, ..., -100, 0]}
        ```

        Returns:
            `{"input_ids": [...], "labels": [...]}` (labels -100 except on each step's last token: int 0/1, or the
            float of a soft label), plus `"mm_token_type_ids"` for vision rows.
        """
        out = tokenization.tokenize_row(
            features,
            tokenizer,
            step_separator=step_separator,
            max_length=max_length,
            max_completion_length=max_completion_length,
            train_on_last_step_only=train_on_last_step_only,
            is_eval=is_eval,
            step_truncation="tokens",
            long_prompt="truncate",
        )
        return {k: out[k] for k in ("input_ids", "labels", "mm_token_type_ids") if k in out}

    def _prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        args = self._prepare_args
        _record_prm_metadata(model, args, self.prm_token_ids)
        if args.freeze_vision_tower:
            _freeze_vision_tower(model)
        if self._peft_config is not None:
            model = _wrap_peft(model, self._peft_config, args)
        if args.disable_dropout:
            disable_dropout_in_model(model)
        return model

    def call_model_init(self, trial=None):
        return self._prepare_model(super().call_model_init(trial))

    def _class_logits(self, model, inputs: dict[str, torch.Tensor], positions=None) -> torch.Tensor:
        """Class logits of every token (`[batch, seq, classes]`), or of `positions` only (`[K, classes]`), computed
        from the hidden states and the head's verdict rows: the head never outputs `[batch, seq, vocab]`."""
        return readout.class_logits(model, {**inputs, "use_cache": False}, self.head, self.prm_token_ids, positions)

    def step_losses(self, class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-step loss at labelled positions (flattened): BCE for one class, soft-target CE for two.

        `class_logits` are per token (`[batch, seq, classes]`, masked here by `labels`) or already read at the
        labelled positions (`[K, classes]` with `labels` the K targets). With hard labels, soft-target CE with
        targets (1 - y, y) is exactly the usual cross-entropy.
        """
        if labels.dim() > 1:  # per-token labels: read the labelled positions
            mask = labels != IGNORE_INDEX
            class_logits, labels = class_logits[mask], labels[mask]
        logits, targets = class_logits.float(), labels.float()
        if logits.shape[-1] == 1:
            return F.binary_cross_entropy_with_logits(logits[:, 0], targets, reduction="none")
        log_probs = torch.log_softmax(logits, dim=-1)
        return -(targets * log_probs[:, 1] + (1 - targets) * log_probs[:, 0])

    def step_weights(
        self, step_type_ids: torch.Tensor | None, labels: torch.Tensor, label_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss weight of each labelled step: `perception_loss_weight` for perception steps (1 otherwise), times
        the step's `label_weights` entry when the rows carry one."""
        mask = labels != IGNORE_INDEX
        weights = torch.ones(int(mask.sum()), dtype=torch.float, device=labels.device)
        if step_type_ids is not None:
            weights[step_type_ids[mask] == STEP_TYPE_IDS[PERCEPTION]] = self.args.perception_loss_weight
        if label_weights is not None:
            weights = weights * label_weights[mask].float()
        return weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        step_type_ids = inputs.pop("step_type_ids", None)
        label_weights = inputs.pop("label_weights", None)
        mask = labels != IGNORE_INDEX
        # Training reads the labelled positions only; evaluation returns every token's class logits, as TRL's
        # PRMTrainer did (`predictions` for `compute_accuracy`): two numbers a token, still no vocabulary.
        class_logits = self._class_logits(model, inputs, positions=None if return_outputs else mask)
        losses = self.step_losses(class_logits[mask] if return_outputs else class_logits, labels[mask])
        weights = self.step_weights(step_type_ids, labels, label_weights)
        # Weighted sum over the count of labelled steps (not over the weights): a weight is a pure multiplier.
        loss = (losses * weights).sum() / max(losses.numel(), 1)
        if return_outputs:
            return loss, {"logits": class_logits}
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """As TRL's PRMTrainer: (loss, class logits of every token, labels)."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, dict(inputs), return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), outputs["logits"].detach(), labels

    def _step_metrics(self, eval_prediction: EvalPrediction) -> dict[str, float]:
        dataset = self._metric_dataset
        step_types = None
        if isinstance(dataset, Dataset) and "step_type_ids" in dataset.column_names:
            step_types = dataset["step_type_ids"]  # rows come back in dataset order (sequential eval sampler)
        return compute_step_metrics(eval_prediction, step_types)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(eval_dataset, str):
            dataset = self.eval_dataset[eval_dataset]
        if not isinstance(dataset, dict):  # a dict is evaluated one dataset at a time, through this method again
            self._metric_dataset = dataset
        if self.args.word_verdicts:
            logger.warning(
                "VLPRMTrainer.evaluate reads every step at its end, but this PRM judges %s steps word by word "
                "(word_verdicts): its scorers score such a step by its lowest word verdict. For the metrics of what "
                "they score, use trl_vlprm.eval.guardrails.scored_step_metrics with a PRMScorer",
                self.args.word_verdicts,
            )
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        self._metric_dataset = test_dataset
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """Write `README.md` (a model card with the paper's citation) to `args.output_dir`, as TRL trainers do."""
        if not self.is_world_process_zero():
            return
        name_or_path = getattr(self.model.config, "_name_or_path", "")
        base_model = name_or_path if name_or_path and not os.path.isdir(name_or_path) else None
        tags = {tags} if isinstance(tags, str) else set(tags or [])
        card = generate_model_card(
            model_name=model_name or Path(self.args.output_dir).name,
            base_model=base_model,
            hub_model_id=self.hub_model_id,
            dataset_name=dataset_name,
            tags=sorted(tags | set(self._tag_names)),
            trainer_name=self._name,
            paper=self._paper,
            head=self.head,
            step_separator=self.args.step_separator,
        )
        os.makedirs(self.args.output_dir, exist_ok=True)
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def _save_checkpoint(self, model, trial):
        # The card goes to the output folder (as TRL) and into the checkpoint, so each checkpoint explains itself.
        model_name = (self.args.hub_model_id or Path(self.args.output_dir).name).split("/")[-1]
        self.create_model_card(model_name=model_name)
        super()._save_checkpoint(model, trial)
        checkpoint = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        card = os.path.join(self.args.output_dir, "README.md")
        if self.is_world_process_zero() and os.path.isdir(checkpoint) and os.path.exists(card):
            shutil.copyfile(card, os.path.join(checkpoint, "README.md"))


def _generative_token_ids(model, processing_class) -> tuple[int, int]:
    if processing_class is not None:
        return prm_token_ids(get_tokenizer(processing_class))
    config = getattr(model, "config", None)
    ids = (getattr(config, "prm_positive_token_id", None), getattr(config, "prm_negative_token_id", None))
    if None in ids:
        raise ValueError("head='generative' needs a `processing_class` to find the '+' and '-' token ids")
    return ids


def _record_prm_metadata(model: PreTrainedModel, args: VLPRMConfig, token_ids: tuple[int, int] | None) -> None:
    # Saved with the checkpoint so scoring reads steps exactly as training labelled them.
    model.config.prm_head = args.head
    args.layout.save_to_config(model.config)  # prm_layout, prm_step_separator, prm_system_prompt, verdict tokens
    if token_ids is not None:
        model.config.prm_positive_token_id, model.config.prm_negative_token_id = token_ids


def _freeze_vision_tower(model: PreTrainedModel) -> int:
    family = family_of_model(model)
    if family is None:
        model_type = getattr(model.config, "model_type", None)
        raise ValueError(f"freeze_vision_tower=True but model type {model_type!r} has no vision tower")
    frozen = 0
    for name, parameter in model.named_parameters():
        if family.is_vision_tower_parameter(name):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    if frozen == 0:
        raise ValueError(f"freeze_vision_tower=True but the model has no {family.vision_tower_description} parameters")
    return frozen


def _wrap_peft(model: PreTrainedModel, peft_config: Any, args: VLPRMConfig):
    from peft import get_peft_model

    if args.head == "value":
        peft_config.modules_to_save = sorted(set(peft_config.modules_to_save or []) | {"score"})
    if args.gradient_checkpointing or getattr(args, "activation_checkpointing", False):
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config)
