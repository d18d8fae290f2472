"""Train a (vision-language) process reward model from one YAML recipe.

    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/train.py \
        --config recipes/configs/vlprm_qwen2_5_vl_3b.yaml

Arguments: `PRMScriptArguments` (data), `trl_vlprm.VLPRMConfig` (training), `trl.ModelConfig` (model, PEFT);
any of them can be given in the YAML file or on the command line.
"""

from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from trl_vlprm import VLPRMConfig, VLPRMTrainer
from trl_vlprm.data.converters import convert_dataset
from trl_vlprm.data.loading import load_records
from trl_vlprm.modeling.hub import model_init_kwargs_from
from trl_vlprm.modeling.processor import load_processor


@dataclass
class PRMScriptArguments(ScriptArguments):
    """`trl.ScriptArguments` plus where the evaluation rows come from.

    Args:
        eval_dataset_name (`str` or `None`): a separate evaluation dataset (path or hub name); default: the
            `dataset_test_split` of `dataset_name` when evaluation is on and that split exists.
        eval_fraction (`float`): hold out this share of the training rows for evaluation when no evaluation
            dataset is given (0 = none).
        dataset_format (`str`): `"records"` (this project's schema, the default) or a source layout converted on
            load: `"trl_stepwise"`, `"vlprm300k"`, `"visualprm400k"` (see `trl_vlprm.data.converters`).
        image_root (`str` or `None`): folder that relative image paths of converted datasets are resolved against.
    """

    eval_dataset_name: str | None = field(default=None, metadata={"help": "Evaluation dataset (path or name)."})
    eval_fraction: float = field(default=0.0, metadata={"help": "Share of training rows held out for eval."})
    dataset_format: str = field(default="records", metadata={"help": "records, trl_stepwise, vlprm300k, ..."})
    image_root: str | None = field(default=None, metadata={"help": "Root of relative image paths."})


def load_split(script_args: PRMScriptArguments, name: str, split: str):
    dataset = load_records(name, split, script_args.dataset_config)
    if script_args.dataset_format == "records":
        return dataset
    kwargs = {"image_root": script_args.image_root} if script_args.dataset_format != "trl_stepwise" else {}
    return convert_dataset(dataset, script_args.dataset_format, **kwargs)


def main(script_args: PRMScriptArguments, training_args: VLPRMConfig, model_args: ModelConfig) -> VLPRMTrainer:
    train_dataset = load_split(script_args, script_args.dataset_name, script_args.dataset_train_split)
    eval_dataset = None
    if script_args.eval_dataset_name:
        eval_dataset = load_split(script_args, script_args.eval_dataset_name, script_args.dataset_test_split)
    elif script_args.eval_fraction > 0:
        split = train_dataset.train_test_split(test_size=script_args.eval_fraction, seed=training_args.seed)
        train_dataset, eval_dataset = split["train"], split["test"]

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
    trainer.train()
    if eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        print(f"world_size={trainer.accelerator.num_processes}")
    trainer.accelerator.wait_for_everyone()  # ranks leave together: a rank exiting mid-save can abort its peers
    return trainer


if __name__ == "__main__":
    main(*TrlParser((PRMScriptArguments, VLPRMConfig, ModelConfig)).parse_args_and_config())
