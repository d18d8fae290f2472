"""The evaluation TTS sweep (`recipes/eval_tts.py`, `trl-vlprm eval`): its config `EvalTTSConfig` and `run`.

Benchmarks, policies and scorers are given as labelled specs (`trl_vlprm.eval.specs`: "label@kind:...", each pinned
so a rerun never reuses samples or scores made by something else under the same label).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from trl_vlprm.eval.selection import check_selection
from trl_vlprm.eval.specs import labelled_specs, load_benchmark_spec, spec_pin
from trl_vlprm.eval.tts_sweep import run_sweep
from trl_vlprm.guidance.backends import (
    POLICY_BACKENDS,
    SCORER_BACKENDS,
    Backend,
    build_from_spec,
    check_spec,
    parse_spec,
    split_label,
)
from trl_vlprm.guidance.sampling import SAMPLING_FIELDS, PolicyTextArguments
from trl_vlprm.labeling.judge import JudgeConfig, judge_argument
from trl_vlprm.utils.ranks import Ranks
from trl_vlprm.utils.resume import atomic_write_text
from trl_vlprm.utils.trackers import check_report_to, log_tables

logger = logging.getLogger(__name__)


def _capped(backend: Backend, cap: int) -> Backend:
    """`backend` with `max_new_tokens` bounded by `cap` (a quick run of a GPU config on a small machine)."""

    def build(args, kwargs, seed):
        return backend.build(
            args, {**kwargs, "max_new_tokens": min(int(kwargs.get("max_new_tokens", cap)), cap)}, seed
        )

    return replace(backend, build=build)


def _transformers_only(backend: Backend) -> Backend:
    """`backend` (hf) reading a spec written for vLLM: the keywords that configure a vLLM engine are dropped, with a
    warning naming them (`HFPolicy` takes the sampling settings, `revision`, `dtype` and `device`)."""
    known = set(SAMPLING_FIELDS) | {"revision", "dtype", "device"}

    def build(args, kwargs, seed):
        dropped = sorted(set(kwargs) - known)
        if dropped:
            logger.warning("policy_backend 'hf': engine keywords %s of %s are dropped", dropped, args)
        return backend.build(args, {k: v for k, v in kwargs.items() if k in known}, seed)

    return replace(backend, build=build)


def policy_backends(config: EvalTTSConfig) -> dict[str, Backend]:
    """The policy backends of a run: the registered ones, with `policy_backend` and `max_new_tokens_cap` applied to
    the in-process model backends (hf, vllm)."""
    backends = {name: POLICY_BACKENDS.get(name) for name in POLICY_BACKENDS}
    if config.policy_backend is not None:
        chosen = POLICY_BACKENDS.get(config.policy_backend)
        if config.policy_backend == "hf":
            chosen = _transformers_only(chosen)
        backends["hf"] = chosen
        backends["vllm"] = chosen
    if config.max_new_tokens_cap is not None:
        for name in ("hf", "vllm"):
            backends[name] = _capped(backends[name], config.max_new_tokens_cap)
    return backends


@dataclass
class EvalTTSConfig(PolicyTextArguments):
    """Settings of `recipes/eval_tts.py` (readable by `trl.TrlParser` from YAML). Every model policy also takes the
    run's `step_separator` and `system_prompt` (`PolicyTextArguments`: a spec cannot hold a newline or free text);
    its other sampling settings are its spec's own keywords. A PRM reads steps with the separator it was trained with.

    Args:
        benchmarks: benchmark specs "name" or "name:source,split=...,limit=...,prompt=paper" with name a key of
            `trl_vlprm.eval.benchmarks.BENCHMARKS` (source: hub name or local path; testbed: generator seed;
            prompt=paper: the paper's policy prompts).
        policies: policy specs, optionally labelled "label@spec" (the label names the policy in tables and files):
            "scripted:perception_error_rate=0.3,reasoning_error_rate=0.1" (testbed), or
            "vllm:<model>,temperature=0.7,..." / "hf:<model>,..." (keywords of `VLLMPolicy`/`HFPolicy`), with
            <model> a folder or a Hub repo id (`revision=...` picks a branch, tag or commit), or
            "server:<base URL>,<base URL>,...,model=<name>,max_concurrency=16" (`ServerPolicy`: one or several
            OpenAI-compatible servers, e.g. `vllm serve` replicas).
        policy_backend: run every model policy (hf and vllm specs) on this backend instead, e.g. "hf" on a machine
            without vLLM; the spec keywords that configure a vLLM engine are then dropped (with a warning). None: as
            each spec says.
        max_new_tokens_cap: upper bound on every model policy's `max_new_tokens` (a quick run of a GPU config on a
            small machine); None: as each spec says.
        scorers: step-scorer specs (optionally "label@spec"): "prm:<PRM folder or repo id>" (a trained VL-PRM),
            "vllm:<PRM folder>" (the PRM on a vLLM pooling engine), "server:<base URL>,...,prm=<PRM folder>" (a PRM
            served by `vllm serve`), "oracle" (testbed truth), "random:seed=1" (no-information control), or any kind
            registered in `trl_vlprm.guidance.backends.SCORER_BACKENDS`.
        process_benches: process-error benchmarks every scorer is also judged on (step F1, see
            `trl_vlprm.eval.process_bench.PROCESS_BENCHES`), e.g. "testbed:num_questions=60" or
            "visualprocessbench:<test.jsonl>"; results go to process_bench.csv/.md, and each solution's steps, scores
            and first errors to process_bench/<bench>.jsonl (for `trl-vlprm view`). Empty (`none` on the command
            line): none.
        selections: outcome selections (see the module docstring), e.g. "majority", "best_of_n:min".
        n_values: the N to report; `max(n_values)` solutions are sampled per question.
        num_subsamples: random subsets of size N drawn per N (accuracy is their mean; std is reported).
        answer_kind: grading kind when a question has no `answer_kind` column ("auto" reads it from the answer).
        answer_judge_base_url: an OpenAI-compatible endpoint whose model reads the final answer of the solutions
            the rule-based grader cannot read (the paper's LLM-judge fallback); None: rules only.
        answer_judge_model: the model name sent to that endpoint (the paper used gpt-4.1).
        answer_judge_api_key_env: environment variable holding its bearer token.
        output_dir: where samples/, results.csv, results.md and accuracy_vs_n.png go. Rerunning resumes.
        seed: seed of the policies, scorers and subsampling.
        report_to: trackers the result tables go to, as `TrainingArguments.report_to`: "none", "all" or names among
            tensorboard, trackio, wandb (`trl_vlprm.utils.trackers`); TensorBoard writes to `<output_dir>/runs`,
            with accuracy against N as scalar curves.
    """

    benchmarks: list[str] = field(
        default_factory=lambda: ["testbed:0,limit=60"],
        metadata={
            "help": "Benchmark specs 'name' or '[label@]name:source,split=...,limit=...'; labels must be unique."
        },
    )
    policies: list[str] = field(
        default_factory=lambda: ["scripted:perception_error_rate=0.3,reasoning_error_rate=0.2"],
        metadata={
            "help": "Policy specs, optionally 'label@spec': scripted, vllm:<model>,..., hf:<model>,... (a model "
            "folder or Hub repo id) or server:<base URL>,...,model=<name>."
        },
    )
    scorers: list[str] = field(
        default_factory=lambda: ["oracle", "random"],
        metadata={"help": "Step-scorer specs, optionally 'label@spec': prm:<folder or repo id>, oracle, random, ..."},
    )
    selections: list[str] = field(
        default_factory=lambda: [
            "first",
            "majority",
            "best_of_n:min",
            "best_of_n:last",
            "weighted_vote:min",
            "pass@n",
        ],
        metadata={"help": "Outcome selections derived from the samples, e.g. majority, best_of_n:min, pass@n."},
    )
    policy_backend: str | None = field(
        default=None,
        metadata={
            "help": "Run every model policy (hf and vllm specs) on this backend instead (hf or vllm), e.g. hf on a "
            "machine without vLLM; None keeps each spec's own backend."
        },
    )
    max_new_tokens_cap: int | None = field(
        default=None,
        metadata={
            "help": "Upper bound on every model policy's max_new_tokens (a quick run of a GPU config on a small "
            "machine); None keeps each spec's own budget."
        },
    )
    process_benches: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Process-error benchmarks every scorer is also judged on (step F1); none by default, and "
            "`--process_benches none` clears a config file's list."
        },
    )
    n_values: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8, 16],
        metadata={"help": "The N to report; max(n_values) solutions are sampled per question."},
    )
    num_subsamples: int = field(default=4, metadata={"help": "Random subsets of size N drawn per N."})
    answer_kind: str = field(
        default="auto", metadata={"help": "Grading kind when a question has no answer_kind column."}
    )
    # The answer judge is a `JudgeConfig` under the `answer_judge_` prefix (`_answer_judge_config`), with the paper's
    # model and OpenAI's key variable as defaults.
    answer_judge_base_url: str | None = judge_argument(
        "base_url",
        None,
        "OpenAI-compatible endpoint whose model reads the final answer of solutions the rule-based grader cannot "
        "read (the paper's LLM-judge fallback); None grades with the rules only.",
    )
    answer_judge_model: str = judge_argument("model", "gpt-4.1")
    answer_judge_api_key_env: str = judge_argument("api_key_env", "OPENAI_API_KEY")
    output_dir: str = field(
        default="outputs/eval_tts", metadata={"help": "Where samples, tables and plots go; rerunning resumes."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the policies, scorers and subsampling."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={
            "help": "Trackers the result tables go to, as TrainingArguments.report_to: 'none', 'all' or names among "
            "tensorboard, trackio, wandb; TensorBoard writes to <output_dir>/runs."
        },
    )

    def __post_init__(self):
        if self.process_benches == ["none"]:  # the command line cannot give an empty list
            self.process_benches = []
        check_report_to(self.report_to, "EvalTTSConfig.report_to")  # before any sampling
        from trl_vlprm.eval.benchmarks import BENCHMARKS
        from trl_vlprm.eval.process_bench import PROCESS_BENCHES

        for selection in self.selections:
            check_selection(selection)
        # Names are checked before any sampling: a typo'd process bench once failed only after the whole sweep.
        for setting, registry in (("benchmarks", BENCHMARKS), ("process_benches", PROCESS_BENCHES)):
            for spec in getattr(self, setting):
                name = parse_spec(split_label(spec)[1])[0]  # benchmarks may be labelled too: "a@testbed:0"
                if name not in registry:
                    raise registry.unknown(name, f"EvalTTSConfig.{setting}: {spec!r}")
        for setting, registry, what in (
            ("policies", POLICY_BACKENDS, "policy"),
            ("scorers", SCORER_BACKENDS, "scorer"),
        ):
            for spec in getattr(self, setting):
                try:
                    check_spec(split_label(spec)[1], registry, what)
                except ValueError as err:
                    raise ValueError(f"EvalTTSConfig.{setting}: {err}") from None
        if not self.n_values or min(self.n_values) < 1:
            raise ValueError(f"EvalTTSConfig.n_values={self.n_values}; need at least one N >= 1")
        if self.num_subsamples < 1:
            raise ValueError(f"EvalTTSConfig.num_subsamples={self.num_subsamples}; must be >= 1")
        if self.policy_backend not in (None, "hf", "vllm"):
            raise ValueError(f"EvalTTSConfig.policy_backend={self.policy_backend!r}; expected 'hf', 'vllm' or None")


def policy_pins(config: EvalTTSConfig, policy_specs: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The pin of each labelled policy spec under `config`: what a model policy is also given (step separator,
    system prompt, backend override, token cap) changes its samples, so it is part of the pin."""
    given = {
        "step_separator": config.step_separator,
        "system_prompt": config.system_prompt,
        "policy_backend": config.policy_backend,
        "max_new_tokens_cap": config.max_new_tokens_cap,
    }
    return {label: spec_pin(spec, config.seed, given) for label, spec in policy_specs.items()}


def _answer_judge_config(config: EvalTTSConfig) -> JudgeConfig:
    """The `answer_judge_*` settings as the `JudgeConfig` they stand for (`answer_judge_model` -> `judge_model`)."""
    prefix = "answer_judge_"
    settings = {
        "judge_" + item.name.removeprefix(prefix): getattr(config, item.name)
        for item in fields(config)
        if item.name.startswith(prefix)
    }
    return JudgeConfig(**settings)


def run(config: EvalTTSConfig) -> list[dict[str, Any]]:
    """Load, sample (resuming), derive, and write samples/, results.csv/.md, accuracy_vs_n.png (and the
    process-bench tables when `config.process_benches` is set).

    Under `accelerate launch --num_processes K` the K processes share each benchmark's questions
    (`trl_vlprm.utils.ranks`); rank 0 derives and writes the results once all are sampled (the others return no row).
    """
    from trl_vlprm.eval.process_bench import (
        load_process_bench_spec,
        process_bench_lines,
        process_bench_metrics,
        process_bench_path,
        process_bench_step_scores,
    )
    from trl_vlprm.eval.report import plot_accuracy_vs_n, write_tables

    ranks = Ranks.from_environment()

    benchmark_specs = labelled_specs(config.benchmarks, "benchmark", lambda spec: parse_spec(spec)[0])
    benchmarks = {label: load_benchmark_spec(spec)[1] for label, spec in benchmark_specs.items()}
    policy_defaults = {"step_separator": config.step_separator, "system_prompt": config.system_prompt}
    backends = policy_backends(config)
    policy_specs = labelled_specs(config.policies, "policy")
    policies = {
        label: (lambda spec=spec: build_from_spec(spec, backends, config.seed, "policy", policy_defaults))
        for label, spec in policy_specs.items()
    }
    scorer_defaults = {}  # a PRM scores with the separator it was trained on (a spec may override it)
    scorer_specs = labelled_specs(config.scorers, "scorer")
    scorers = {
        label: build_from_spec(spec, SCORER_BACKENDS, config.seed, "scorer", scorer_defaults)
        for label, spec in scorer_specs.items()
    }
    pins = {
        "benchmarks": {label: {"spec": spec} for label, spec in benchmark_specs.items()},
        "policies": policy_pins(config, policy_specs),
        "scorers": {label: spec_pin(spec, config.seed, scorer_defaults) for label, spec in scorer_specs.items()},
    }
    answer_judge = None
    if config.answer_judge_base_url:
        from trl_vlprm.eval.answer_judge import AnswerJudge

        answer_judge = AnswerJudge(_answer_judge_config(config))
    rows = run_sweep(
        benchmarks,
        policies,
        scorers,
        config.selections,
        config.n_values,
        config.output_dir,
        config.num_subsamples,
        config.seed,
        config.answer_kind,
        pins,
        answer_judge,
        ranks,
    )
    if not ranks.is_main:  # rank 0 writes the tables once every rank has sampled its share
        return rows
    rows = with_earlier_rows(
        rows, Path(config.output_dir) / "results.csv", ("benchmark", "policy", "scorer", "selection", "n")
    )
    write_tables(rows, config.output_dir)
    plot = Path(config.output_dir) / "accuracy_vs_n.png"
    try:
        plot_accuracy_vs_n(rows, plot)
    except ImportError as err:  # the optional `plots` extra is missing: only the plot is lost
        warnings.warn(
            f"matplotlib cannot be imported ({err}): {plot.name} is not written, every table is; install "
            "the plots extra (pip install 'trl_vlprm[plots]') to get it",
            stacklevel=2,
        )
    process_rows = []
    for bench_spec in config.process_benches:
        bench = load_process_bench_spec(bench_spec, config.seed)
        step_scores = {name: process_bench_step_scores(scorer, bench) for name, scorer in scorers.items()}
        for name, scores in step_scores.items():
            for step_type, metrics in process_bench_metrics(scores, bench).items():
                process_rows.append({"bench": bench_spec, "scorer": name, "steps": step_type, **metrics})
        for name, scorer in scorers.items():  # `trl-vlprm check`'s image-swap guard-rail, for each trained scorer
            if parse_spec(scorer_specs[name])[0] not in ("oracle", "noisy_oracle", "random"):
                warn_if_blind(scorer, bench, f"{bench_spec} / {name}")
        # per solution, for `trl-vlprm view`: gold against each scorer's predicted first error
        lines = process_bench_lines(bench, step_scores)
        text = "".join(json.dumps(line) + "\n" for line in lines)
        atomic_write_text(process_bench_path(config.output_dir, bench_spec), text)
    if process_rows or (Path(config.output_dir) / "process_bench.csv").exists():
        process_csv = Path(config.output_dir) / "process_bench.csv"
        process_rows = with_earlier_rows(process_rows, process_csv, ("bench", "scorer", "steps"))
        write_tables(process_rows, config.output_dir, "process_bench", wide=False)
    settings = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(config).items()}
    log_tables(
        config.report_to,
        {"results": rows, "process_bench": process_rows},
        Path(config.output_dir) / "runs",
        project="trl_vlprm-eval",
        config=settings,
        step_column="n",
    )
    return rows


def warn_if_blind(scorer: Any, bench: Any, where: str, max_questions: int = 30) -> None:
    """Log `check`'s warning when swapping the images of a process bench's questions barely moves `scorer`."""
    from trl_vlprm.eval.guardrails import image_swap_sensitivity

    rows = [row for row in bench if row.get("images")]
    if len({str(row["id"]).split("#")[0] for row in rows}) < 2:
        return
    swap = image_swap_sensitivity(scorer, rows, max_questions=max_questions)
    if swap.blind:
        logger.warning("%s: %s", where, " ".join(line.strip() for line in swap.lines()))


def _csv_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def with_earlier_rows(rows: list[dict[str, Any]], path: Path, key: tuple[str, ...]) -> list[dict[str, Any]]:
    """`rows` plus the rows of an earlier run's table at `path` that this run did not produce (a rerun with fewer
    scorers, benchmarks or strategies into the same folder), so a rerun never silently drops results; each kept row
    is logged. The earlier rows come first, in their order."""
    import csv

    if not path.exists():
        return rows
    with open(path, newline="") as file:
        earlier = [{name: _csv_value(value) for name, value in row.items()} for row in csv.DictReader(file)]
    produced = {tuple(str(row.get(name)) for name in key) for row in rows}
    kept = [row for row in earlier if tuple(str(row.get(name)) for name in key) not in produced]
    if kept:
        settings = sorted({" / ".join(str(row.get(name)) for name in key[:-1]) for row in kept})
        logger.warning("%s: kept %d row(s) of an earlier run not rerun here: %s", path, len(kept), "; ".join(settings))
    return kept + rows
