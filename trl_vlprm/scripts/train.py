r"""`trl-vlprm train`: train a (vision-language) process reward model from one YAML recipe.

    trl-vlprm train --config recipes/configs/vlprm_tiny_cpu.yaml
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/train.py \
        --config recipes/configs/vlprm_qwen2_5_vl_3b.yaml

Arguments: `PRMScriptArguments` (data), `trl_vlprm.VLPRMConfig` (training), `trl.ModelConfig` (model, PEFT);
any of them can be given in the YAML file or on the command line. Writes the model, a model card (`README.md`),
`train_results.json`, `eval_results.json` and `all_results.json` to `output_dir`, and pushes to the Hub with
`--push_to_hub`.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from trl_vlprm import VLPRMConfig, VLPRMTrainer
from trl_vlprm.data.converters import convert_dataset
from trl_vlprm.data.loading import STEP_RECORDS, load_records, require_columns
from trl_vlprm.data.schema import question_key
from trl_vlprm.modeling.hub import model_init_kwargs_from
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.scripts import command_parser
from trl_vlprm.trainer.data_preparation import SOURCE_ROW
from trl_vlprm.trainer.metrics import verdict_warnings
from trl_vlprm.utils.errors import UsageError

logger = logging.getLogger("trl_vlprm.scripts.train")


@dataclass
class PRMScriptArguments(ScriptArguments):
    """`trl.ScriptArguments` plus where the evaluation rows come from.

    Args:
        eval_dataset_name (`str` or `None`): a separate evaluation dataset (path or hub name): its
            `dataset_test_split` when it has named splits (a saved `DatasetDict`, the hub layout, a hub dataset), all
            its rows when it is a single file or a folder of shards. Without it (and without `eval_fraction`), and
            with evaluation on (`eval_strategy` other than `"no"`), the evaluation rows are the `dataset_test_split`
            of `dataset_name`, which must have one (a single file has none: an error says so).
        eval_fraction (`float`): hold out this share of the training questions for evaluation instead (0 = none):
            all solution rows of a question (see `trl_vlprm.data.schema.question_key`) go to the same side, so no
            question is both trained on and evaluated on.
        dataset_format (`str`): `"records"` (this project's schema, the default) or a source layout converted on
            load: `"trl_stepwise"`, `"vlprm300k"`, `"visualprm400k"` (see `trl_vlprm.data.converters`).
        image_root (`str` or `None`): folder that relative image paths of converted datasets are resolved against.
    """

    eval_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A separate evaluation dataset (path or hub name): its dataset_test_split when it has named "
            "splits, all its rows when it is a single file or a folder of shards."
        },
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of the training questions held out for evaluation (0 = none); all solution rows of a "
            "question (same question_id, else the same id before '#') go to the same side."
        },
    )
    dataset_format: str = field(
        default="records",
        metadata={"help": "Layout of the dataset: records, trl_stepwise, vlprm300k or visualprm400k."},
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Folder that relative image paths of converted datasets are resolved against."}
    )


def make_parser(prog: str | None = None) -> TrlParser:
    return command_parser((PRMScriptArguments, VLPRMConfig, ModelConfig), prog, __doc__)


def load_split(script_args: PRMScriptArguments, name: str, split: str, strict_split: bool = False):
    """One split, converted to records, without the rows that have no step (as TRL's PRM example did), counted."""
    dataset = load_records(name, split, script_args.dataset_config, strict_split=strict_split)
    if script_args.dataset_format != "records":
        kwargs = {"image_root": script_args.image_root} if script_args.dataset_format != "trl_stepwise" else {}
        dataset = convert_dataset(dataset, script_args.dataset_format, **kwargs)
    else:
        require_columns(dataset, name, ("prompt", "completions", "labels"), STEP_RECORDS)
    if SOURCE_ROW not in dataset.column_names:  # errors name a row as numbered in the file, after filter and split
        dataset = dataset.add_column(SOURCE_ROW, list(range(len(dataset))))
    with_steps = dataset.filter(lambda steps: len(steps or []) > 0, input_columns="completions")
    if len(with_steps) < len(dataset):
        logger.warning(
            "%s[%s]: %d of %d row(s) have no completions and are skipped",
            name,
            split,
            len(dataset) - len(with_steps),
            len(dataset),
        )
    return with_steps


def load_datasets(script_args: PRMScriptArguments, training_args: VLPRMConfig):
    """(train, eval or None) as the arguments ask."""
    train_dataset = load_split(script_args, script_args.dataset_name, script_args.dataset_train_split)
    eval_dataset = None
    if script_args.eval_dataset_name:
        eval_dataset = load_split(script_args, script_args.eval_dataset_name, script_args.dataset_test_split)
    elif script_args.eval_fraction > 0:
        train_dataset, eval_dataset = split_by_question(train_dataset, script_args.eval_fraction, training_args.seed)
    elif training_args.eval_strategy != "no":
        try:
            eval_dataset = load_split(script_args, script_args.dataset_name, script_args.dataset_test_split, True)
        except (ValueError, KeyError) as err:
            raise UsageError(
                f"eval_strategy={training_args.eval_strategy.value!r} needs evaluation rows: "
                f"{script_args.dataset_name} has no split {script_args.dataset_test_split!r} ({err}); set "
                "--dataset_test_split, --eval_dataset_name or --eval_fraction"
            ) from err
    return train_dataset, eval_dataset


def split_by_question(dataset, fraction: float, seed: int):
    """(train, eval): a seeded `fraction` of the questions (rounded up, as `train_test_split` rounds its test rows)
    with all their solution rows in eval, the others in train, each in file order. A row-level split would put
    solutions of one question on both sides and inflate the held-out metrics."""
    columns = [c for c in ("question_id", "id", "prompt") if c in dataset.column_names]
    keys = [question_key(row) for row in dataset.select_columns(columns)]
    questions = list(dict.fromkeys(keys))
    if len(questions) < 2:
        raise UsageError(f"eval_fraction splits by question and needs at least 2 questions; got {len(questions)}")
    random.Random(seed).shuffle(questions)
    n_eval = min(max(math.ceil(fraction * len(questions)), 1), len(questions) - 1)
    held_out = set(questions[:n_eval])
    eval_rows = [i for i, key in enumerate(keys) if key in held_out]
    train_rows = [i for i, key in enumerate(keys) if key not in held_out]
    return dataset.select(train_rows), dataset.select(eval_rows)


def main(script_args: PRMScriptArguments, training_args: VLPRMConfig, model_args: ModelConfig) -> VLPRMTrainer:
    train_dataset, eval_dataset = load_datasets(script_args, training_args)

    # Every ModelConfig flag is honoured (revision, dtype, attention, 4/8-bit) or refused (trust_remote_code).
    training_args.model_init_kwargs = {**model_init_kwargs_from(model_args), **(training_args.model_init_kwargs or {})}
    trainer = VLPRMTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=load_processor(
            model_args.model_name_or_path,
            training_args.min_pixels,
            training_args.max_pixels,
            revision=training_args.model_init_kwargs.get("revision"),
        ),
        peft_config=get_peft_config(model_args),
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    if eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if trainer.accelerator.is_main_process:
            for line in verdict_warnings(metrics):
                print(line)

    trainer.save_model(training_args.output_dir)
    # A local folder is no hub dataset: the card links datasets by hub name only.
    dataset_name = None if Path(script_args.dataset_name).exists() else script_args.dataset_name
    trainer.create_model_card(dataset_name=dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
    trainer.accelerator.wait_for_everyone()  # ranks leave together: a rank exiting mid-save can abort its peers
    return trainer
