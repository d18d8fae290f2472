"""`LabelConfig`: the arguments of `trl-vlprm label` (`recipes/build_dataset.py`), validated, and what is pinned."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl_vlprm.guidance.backends import (
    POLICY_BACKENDS,
    MissingModelError,
    check_spec,
    config_policy_spec,
    parse_spec,
)
from trl_vlprm.guidance.sampling import SamplingArguments
from trl_vlprm.labeling.combine import DISAGREEMENT_POLICIES, RULES, UNKNOWN_POLICIES
from trl_vlprm.labeling.judge import JudgeConfig
from trl_vlprm.labeling.mc import MC_MODES, MCConfig
from trl_vlprm.utils.resume import dataclass_settings
from trl_vlprm.utils.trackers import check_report_to


@dataclass
class LabelConfig(SamplingArguments):
    """Arguments of `trl-vlprm label` / `recipes/build_dataset.py`, and the sampling settings of a model-backed policy
    (hf, vllm, server; `SamplingArguments`: `step_separator`, `temperature`, `top_p`, `top_k`, `repetition_penalty`,
    `max_new_tokens`, `max_step_tokens`, `system_prompt`).

    Args:
        dataset: "puzzles" (generated testbed puzzles) or a `datasets` folder / .jsonl / .json / .parquet file of
            question records (`id`, `prompt`, `images`, `answer`, optional `options`, `category`).
        dataset_split: split to read from a `DatasetDict` folder.
        num_questions: label only the first questions (all when None, 64 generated for "puzzles"); must be >= 1.
            Not pinned: a rerun with more questions labels the new ones.
        output_dir: folder of the Parquet shards (resumable).
        shard_size: questions per shard.
        rule: combination rule, one of `trl_vlprm.labeling.combine.RULES`.
        disagreement: consensus rule only: "drop" or "weight" the steps where MC and the judge disagree.
        disagreement_weight: weight of a disagreeing step under `disagreement="weight"`.
        judge_unknown: a solution with an "unknown" judge verdict: "keep_prefix" (the steps judged before it keep
            their labels) or "drop" (left out, as the paper does).
        num_rollouts: solutions sampled per question.
        mc_mode: "every_step", "every_step_until_zero" (the paper's: stop at the first prefix scoring 0) or
            "binary_search" (OmegaPRM first-error search).
        mc_num_completions: K, completions per MC estimate.
        mc_threshold: a step is good when its MC score is above this.
        policy: a policy backend of `trl_vlprm.guidance.backends`: "scripted" (testbed policy: "puzzles" or a
            `trl-vlprm puzzles` file),
            "hf" (transformers) or "vllm" (a vLLM engine) on the model at `policy_model_path`, or a full spec such as
            "vllm:<model>,top_p=0.9" or "server:http://host:8000/v1,model=<name>" (OpenAI-compatible servers).
        policy_model_path: the policy model ("hf", "vllm"): a folder or a Hub repo id.
        policy_model_revision: branch, tag or commit of a `policy_model_path` repo id (None: "main").
        perception_error_rate / reasoning_error_rate: error rates of the scripted policy.
        judge: "server" (an OpenAI-compatible endpoint at `judge_base_url`), "batch" (the OpenAI Batch API at
            `judge_base_url` or an Azure endpoint, `trl_vlprm.labeling.batch_judge`: half the price, resumable, for
            runs at scale), "testbed" (an in-process `JudgeServer` answering from the scripted policy's gold with the
            noise below) or "none". How the judge
            is reached (URL, model, timeout, retries, concurrency) is a `trl_vlprm.labeling.judge.JudgeConfig`, parsed
            beside this config (`judge_base_url`, `judge_model`, ... in a recipe).
        judge_max_failed_share: a shard on whose solutions the judge failed for more than this share (or for all of
            them) is not written and the run stops naming the errors; 1.0 stops only when every call failed.
        judge_flip_rate_perception / judge_flip_rate_reasoning: noise of the "testbed" judge.
        seed: seed of the puzzles, the scripted policy and the testbed judge.
        show_progress: show a tqdm bar with the running costs.
        strong_completer: a stronger policy (a backend spec) estimating the same MC prefixes again; labels end at
            the first step where its hard labels and the policy's differ (Athena-PRM's weak/strong completer
            agreement, `trl_vlprm.labeling.combine.completer_agreement`), whatever the rule; None: off.
        report_to: trackers the labelling's tables (summary, rule cases) go to, as `TrainingArguments.report_to`:
            "none", "all" or names among tensorboard, trackio, wandb (`trl_vlprm.utils.trackers`); TensorBoard
            writes to `<output_dir>/runs`.
        rollouts_file: a JSONL file of rollouts with their MC estimates, labelled instead of sampling
            (`trl_vlprm.labeling.importing`: the paper's format, or ours with the questions from `dataset`).
        rollouts_format: "paper", "ours" or "auto" (told apart by the first line).
        verdict_files: judge answers about the imported rollouts (Batch API output/error files, the paper's
            verification results), read by `judge_prompt`'s parser; None asks the configured judge.
        image_root: folder that relative image paths of a paper-format rollouts file are read from.
    """

    dataset: str = field(
        default="puzzles",
        metadata={
            "help": "'puzzles' (generated testbed puzzles) or a datasets folder / .jsonl / .json / .parquet file of"
            " question records."
        },
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to read from a DatasetDict folder."})
    num_questions: int | None = field(
        default=None,
        metadata={
            "help": "Label only the first questions (all when None, 64 generated for 'puzzles'); must be >= 1 and "
            "is not pinned, so a rerun with more labels the new ones."
        },
    )
    output_dir: str = field(
        default="outputs/labels", metadata={"help": "Folder of the Parquet shards; rerunning into it resumes."}
    )
    shard_size: int = field(default=64, metadata={"help": "Questions per shard."})
    rule: str = field(
        default="consensus", metadata={"help": "Combination rule, one of trl_vlprm.labeling.combine.RULES."}
    )
    disagreement: str = field(
        default="drop",
        metadata={"help": "Consensus rule only: 'drop' or 'weight' the steps where MC and the judge disagree."},
    )
    disagreement_weight: float = field(
        default=0.5, metadata={"help": "Weight of a disagreeing step under disagreement='weight'."}
    )
    judge_unknown: str = field(
        default="keep_prefix",
        metadata={
            "help": "A solution with an 'unknown' judge verdict: 'keep_prefix' (the steps judged before it keep their "
            "labels) or 'drop' (left out, as the paper does)."
        },
    )
    num_rollouts: int = field(default=4, metadata={"help": "Solutions sampled per question."})
    mc_mode: str = field(
        default="binary_search",
        metadata={
            "help": "'every_step', 'every_step_until_zero' (the paper's: stop at the first prefix scoring 0) or "
            "'binary_search' (OmegaPRM first-error search)."
        },
    )
    mc_num_completions: int = field(default=8, metadata={"help": "Completions per Monte-Carlo estimate (K)."})
    mc_threshold: float = field(default=0.0, metadata={"help": "A step is good when its MC score is above this."})
    policy: str = field(
        default="scripted",
        metadata={
            "help": "The policy, a backend of trl_vlprm.guidance.backends: 'scripted' (testbed policy: 'puzzles' "
            "or a trl-vlprm puzzles file), 'hf' (transformers) or 'vllm' (a vLLM engine) on the model at "
            "policy_model_path, or a full spec such as 'vllm:<model>,top_p=0.9' or "
            "'server:http://host:8000/v1,model=<name>' (OpenAI-compatible servers)."
        },
    )
    policy_model_path: str | None = field(
        default=None,
        metadata={"help": "The policy model (policy 'hf' or 'vllm'): a local folder or a Hub repo id."},
    )
    policy_model_revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of a policy_model_path repo id (None: main)."}
    )
    perception_error_rate: float = field(
        default=0.15, metadata={"help": "Chance a perception step of the scripted policy misreads the image."}
    )
    reasoning_error_rate: float = field(
        default=0.1, metadata={"help": "Chance a reasoning step of the scripted policy slips."}
    )
    judge: str = field(
        default="testbed",
        metadata={
            "help": "'server' (an OpenAI-compatible endpoint at judge_base_url), 'batch' (the OpenAI Batch API at "
            "judge_base_url or an Azure endpoint: half the price, resumable), 'testbed' (an in-process server "
            "answering from the scripted policy's gold with noise) or 'none'."
        },
    )
    judge_max_failed_share: float = field(
        default=0.5,
        metadata={
            "help": "A shard on whose solutions the judge failed for more than this share (or for all) is not "
            "written and the run stops naming the errors; 1.0 stops only when every call failed."
        },
    )
    judge_flip_rate_perception: float = field(
        default=0.15, metadata={"help": "Chance the 'testbed' judge flips its verdict on a perception step."}
    )
    judge_flip_rate_reasoning: float = field(
        default=0.1, metadata={"help": "Chance the 'testbed' judge flips its verdict on a reasoning step."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the puzzles, the scripted policy and the testbed judge."})
    show_progress: bool = field(default=True, metadata={"help": "Show a tqdm bar with the running costs."})
    strong_completer: str | None = field(
        default=None,
        metadata={
            "help": "A stronger policy (a backend spec, e.g. 'vllm:<model>') that estimates the same MC prefixes "
            "again: labels end where its hard labels and the policy's differ (Athena-PRM's weak/strong agreement "
            "filter), on top of any rule; None: off."
        },
    )
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={
            "help": "Trackers the labelling's tables go to, as TrainingArguments.report_to: 'none', 'all' or names "
            "among tensorboard, trackio, wandb; TensorBoard writes to <output_dir>/runs."
        },
    )
    rollouts_file: str | None = field(
        default=None,
        metadata={
            "help": "A JSONL file of rollouts with their Monte-Carlo estimates to label instead of sampling (the "
            "paper's format or ours, trl_vlprm.labeling.importing); None samples them with the policy."
        },
    )
    rollouts_format: str = field(
        default="auto",
        metadata={"help": "Format of rollouts_file: 'paper', 'ours' or 'auto' (told apart by the first line)."},
    )
    verdict_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Judge answers for the imported rollouts: Batch API output/error files or the paper's "
            "verification results files, read by judge_prompt's parser; None asks the configured judge."
        },
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder relative image paths of a rollouts_file in the paper's format are read from."},
    )

    def __post_init__(self):
        check_report_to(self.report_to, "LabelConfig.report_to")  # before any rollout: a tracker not installed
        RULES.check(self.rule, "LabelConfig.rule")
        MC_MODES.check(self.mc_mode, "LabelConfig.mc_mode")
        checks = {
            "judge": ("server", "batch", "testbed", "none"),
            "disagreement": DISAGREEMENT_POLICIES,
            "judge_unknown": UNKNOWN_POLICIES,
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"LabelConfig.{name}={getattr(self, name)!r}; expected one of {allowed}")
        if RULES.get(self.rule).needs_judge and self.judge == "none" and not self.verdict_files:
            raise ValueError(f"LabelConfig.rule={self.rule!r} needs a judge but judge='none'")
        if self.rollouts_format not in ("auto", "paper", "ours"):
            raise ValueError(
                f"LabelConfig.rollouts_format={self.rollouts_format!r}; expected 'auto', 'paper' or 'ours'"
            )
        if self.verdict_files and not self.rollouts_file:
            raise ValueError("LabelConfig.verdict_files are answers about imported rollouts: give rollouts_file too")
        if self.strong_completer is not None:
            if not RULES.get(self.rule).needs_mc:
                raise ValueError(f"LabelConfig.strong_completer re-estimates MC labels; rule {self.rule!r} reads none")
            try:
                check_spec(self.strong_completer, POLICY_BACKENDS, "strong completer")
            except ValueError as err:
                raise ValueError(f"LabelConfig.strong_completer={self.strong_completer!r}: {err}") from None
        if self.rollouts_file is not None:
            if self.judge == "testbed" and not self.verdict_files and RULES.get(self.rule).needs_judge:
                raise ValueError("LabelConfig.judge='testbed' answers from gold that imported rollouts do not carry")
            self._check_sizes()
            return  # no policy samples anything: its settings are not checked
        try:
            check_spec(self.policy_spec(), POLICY_BACKENDS, "policy")
        except MissingModelError as err:
            raise ValueError(f"LabelConfig.policy_model_path is needed for policy {self.policy!r} ({err})") from None
        except ValueError as err:
            raise ValueError(f"LabelConfig.policy={self.policy!r}: {err}") from None
        if self.judge == "testbed" and parse_spec(self.policy_spec())[0] != "scripted":
            raise ValueError("LabelConfig.judge='testbed' answers from gold only the scripted policy knows")
        self._check_sizes()

    def _check_sizes(self) -> None:
        if self.shard_size < 1 or self.num_rollouts < 1:
            raise ValueError("LabelConfig.shard_size and num_rollouts must be >= 1")
        if self.num_questions is not None and self.num_questions < 1:
            raise ValueError(f"LabelConfig.num_questions={self.num_questions}; must be >= 1 (or None for all)")
        if not 0.0 <= self.judge_max_failed_share <= 1.0:
            raise ValueError(f"LabelConfig.judge_max_failed_share={self.judge_max_failed_share}; must be in [0, 1]")

    def policy_spec(self) -> str:
        """The policy as one backend spec (`trl_vlprm.guidance.backends.config_policy_spec`)."""
        return config_policy_spec(self)

    def questions(self) -> Any:
        """The question records `dataset` names: generated puzzles (64 unless `num_questions` says), or a file or
        folder read by `trl_vlprm.data.loading.load_questions`."""
        if self.dataset == "puzzles":
            from trl_vlprm.testbed import generate_puzzles

            return generate_puzzles(64 if self.num_questions is None else self.num_questions, seed=self.seed)
        from trl_vlprm.data.loading import load_questions

        return load_questions(self.dataset, self.dataset_split, self.num_questions)

    def combination_settings(self) -> dict[str, Any]:
        """How `rule` combines each solution's MC labels and verdicts: the keywords `label_solutions` and
        `label_batch` take, so every labelling path (rollouts, batch judge, imported rollouts) reads them alike."""
        return {
            "disagreement": self.disagreement,
            "disagreement_weight": self.disagreement_weight,
            "judge_unknown": self.judge_unknown,
        }

    def mc_config(self) -> MCConfig | None:
        if not RULES.get(self.rule).needs_mc:
            return None
        return MCConfig(self.mc_num_completions, self.mc_threshold, self.mc_mode)

    def pinned(self, judge: JudgeConfig | None = None) -> dict[str, Any]:
        """Settings a resumed run must share (everything that changes what a record holds).

        Left out: where and how the work is done (output folder, progress bar), the judge's failure share, which a
        user changes to get past a failing judge, and `num_questions`, since which questions are covered is recorded
        per shard. Of the judge's settings (`judge`, default `JudgeConfig()`) only the *model* and the *prompt* are
        pinned, not how it is reached (URL, timeout, retries, backoff, concurrency, key variable, batch settings).
        """
        judge = judge or JudgeConfig()
        pinned = {**dataclass_settings(self, exclude=_NOT_PINNED), "judge_model": judge.judge_model}
        for name in _PINNED_WHEN_SET:  # so folders labelled before these settings existed still resume
            if pinned[name] == SamplingArguments.__dataclass_fields__[name].default:
                del pinned[name]
        if judge.judge_prompt != "json":  # pinned only when set, so folders labelled before it existed still resume
            pinned["judge_prompt"] = judge.judge_prompt
        if pinned["strong_completer"] is None:  # pinned only when set, as above
            pinned.pop("strong_completer")
        importing = self.rollouts_file is not None
        for name in _IMPORT_SETTINGS:  # likewise: only an import pins what it imports
            if pinned[name] is None or not importing:
                pinned.pop(name)
        return pinned


_NOT_PINNED = ("output_dir", "show_progress", "num_questions", "judge_max_failed_share", "report_to")
_PINNED_WHEN_SET = ("top_p", "top_k", "repetition_penalty", "max_step_tokens", "system_prompt")
_IMPORT_SETTINGS = ("rollouts_file", "rollouts_format", "verdict_files", "image_root")
