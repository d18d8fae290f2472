"""Run a search strategy over a dataset of questions: one JSONL line per question, resumable, graded.

Each finished question is appended to the output file as one line (flushed and fsynced), so an interrupted run loses
at most the question in flight. A rerun reads the file first and skips every question id already there; a line cut
short by a crash (the last one) is dropped by rewriting the file atomically. Every line carries the settings that
produced it (strategy, search config and every recipe argument that changes a result, model folders by fingerprint)
and a content digest of its question (and, for `trl-vlprm view`, its prompt and image references, not pinned): a
rerun with other settings, or over a question whose content changed, is
refused, so one file never mixes runs. While a run writes, it holds `<output_file>.lock`; a second process on the
same file stops at once with a clear message (`trl_vlprm.utils.resume`). Under `accelerate launch` the processes share
the questions left: rank 0 holds the lock and appends its share, the others append to part files it merges at the end
(`trl_vlprm.utils.ranks`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trl_vlprm.data.answers import Grader, grade_question
from trl_vlprm.data.loading import load_questions
from trl_vlprm.data.references import question_reference
from trl_vlprm.data.schema import RecordError, question_ids
from trl_vlprm.guidance import backends
from trl_vlprm.guidance.backends import (
    POLICY_BACKENDS,
    SCORER_BACKENDS,
    MissingModelError,
    check_spec,
    config_policy_spec,
    get_backend,
    parse_spec,
    spec_of,
)
from trl_vlprm.guidance.policy import Policy, Question, StepScorer
from trl_vlprm.guidance.sampling import SamplingArguments, SamplingConfig
from trl_vlprm.guidance.strategies import STRATEGIES, SearchConfig, get_strategy
from trl_vlprm.utils.ranks import SINGLE, Ranks, merge_parts
from trl_vlprm.utils.resume import (
    check_settings,
    dataclass_settings,
    path_fingerprint,
    question_digest,
    read_results,
)


@dataclass
class TTSSummary:
    """Outcome of `run_tts`: `accuracy` counts every question of the dataset found in the output file."""

    output_file: str
    num_questions: int
    num_run: int
    num_skipped: int
    num_correct: int

    @property
    def accuracy(self) -> float:
        return self.num_correct / self.num_questions if self.num_questions else 0.0


def _finished(output_file: Path, settings: Mapping[str, Any], questions: Mapping[str, Question]) -> dict[str, bool]:
    """`{id: correct}` of the lines already in `output_file`; refuses lines made with other settings or over a
    question whose content has changed since."""
    done: dict[str, bool] = {}
    for number, record in enumerate(read_results(output_file), start=1):
        if "correct" not in record:
            raise ValueError(f"{output_file}:{number}: field 'correct' missing; not a run_tts results file")
        where = f"{output_file}:{number}: field 'settings' (question {record['id']})"
        check_settings(record.get("settings") or {}, settings, where)
        qid = str(record["id"])
        if qid in questions and record.get("question_digest") != question_digest(questions[qid]):
            raise RecordError(
                qid,
                "question_digest",
                f"{output_file}:{number} answered another version of this question (its "
                "content changed since); restore the old inputs or write to another file",
            )
        done[qid] = bool(record["correct"])
    return done


def run_tts(
    questions: Sequence[Question],
    strategy: str,
    policy: Policy,
    scorer: StepScorer | None,
    config: SearchConfig,
    output_file: str | Path,
    grader: Grader | None = None,
    show_progress: bool = True,
    run_tags: Mapping[str, Any] | None = None,
    ranks: Ranks | None = None,
) -> TTSSummary:
    """Run `strategy` on every question not yet in `output_file`; append one graded JSONL line per question.

    Args:
        questions: question records (`id`, `prompt`, `images`, `answer`, optional `options`).
        strategy: a name in `trl_vlprm.guidance.strategies.STRATEGIES`.
        policy: the policy backend.
        scorer: the step scorer (PRM); None only for strategies that need none (greedy, majority).
        config: search settings, written into every line and checked on resume.
        output_file: JSONL file, created with its folder if needed.
        grader: `grade(prediction, gold, options) -> bool`; defaults to `trl_vlprm.data.answers.grade` with the
            question's `answer_kind` (as the evaluation sweep grades).
        show_progress: show a tqdm bar.
        run_tags: more settings that must match on resume (the recipe passes the policy and scorer it used).
        ranks: the processes of a launch sharing the questions (`trl_vlprm.utils.ranks`); rank 0 returns the summary
            of the whole file, written once all are done (the others, of their own share).
    """
    runner = get_strategy(strategy)
    ranks = ranks or SINGLE
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    ids = question_ids(questions, "guidance")
    by_id = dict(zip(ids, questions))
    settings = {"strategy": strategy, **asdict(config), **dict(run_tags or {})}
    done: dict[str, bool] = {}

    def plan() -> list[str]:  # rank 0, holding the file's lock
        merge_parts(output_file)  # what the other ranks of an interrupted run had written
        done.update(_finished(output_file, settings, by_id))
        return [qid for qid in ids if qid not in done]

    with ranks.locked_plan(output_file, plan) as todo:
        mine = ranks.share(todo)
        ranks.log(f"tts {strategy}: {len(mine)} of the {len(todo)} questions left")
        with ranks.append_records(output_file) as sink:
            for qid in tqdm(mine, desc=f"tts {strategy}", disable=not show_progress):
                question = by_id[qid]
                if "answer" not in question:
                    raise RecordError(qid, "answer", "missing; needed to grade the result")
                result = runner(question, policy, scorer, config)
                correct = grade_question(result.answer, question, grader)
                line = {
                    **result.to_dict(),
                    **question_reference(question),  # what a reader shows beside the steps (not pinned)
                    "gold": question["answer"],
                    "correct": correct,
                    "question_digest": question_digest(question),
                    "settings": settings,
                }
                sink.write(json.dumps(line) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                done[qid] = correct
        ranks.wait_for_all(f"tts {strategy}")
        if ranks.is_main and ranks.world_size > 1:
            merge_parts(output_file)
            done = _finished(output_file, settings, by_id)
    if not ranks.is_main:  # a follower reports its own share only
        return TTSSummary(str(output_file), len(mine), len(mine), 0, sum(done[qid] for qid in mine))
    in_dataset = [done[qid] for qid in ids if qid in done]
    return TTSSummary(
        output_file=str(output_file),
        num_questions=len(ids),
        num_run=len(todo),
        num_skipped=len(ids) - len(todo),
        num_correct=sum(in_dataset),
    )


def summary_line(summary: TTSSummary, strategy: str) -> str:
    return (
        f"{strategy}: accuracy {summary.accuracy:.4f} ({summary.num_correct}/{summary.num_questions}); "
        f"ran {summary.num_run}, skipped {summary.num_skipped} already in {summary.output_file}"
    )


@dataclass
class TTSArguments(SamplingArguments):
    """Arguments of `recipes/tts.py` besides the search settings (`SearchConfig`), and the policy's sampling settings
    (`SamplingArguments`: `step_separator`, `temperature`, `top_p`, `top_k`, `repetition_penalty`, `max_new_tokens`,
    `max_step_tokens`, `system_prompt`; the paper's protocol uses top_k 20 and repetition penalty 1.05).

    Args:
        dataset: "puzzles" for freshly generated testbed puzzles, or a `datasets` folder / .jsonl / .json / .parquet
            file of question records; `recipes/tts.py` also reads "benchmark:<spec>", an evaluation benchmark spec
            (`trl_vlprm.eval.specs.load_benchmark_spec`, e.g. "benchmark:puzzlevqa:limit=50,prompt=paper").
        dataset_split: split to read when `dataset` is a `DatasetDict` folder.
        num_questions: use only the first questions (all when None, 64 generated for "puzzles"); must be >= 1. Not
            pinned: a rerun with more questions answers the new ones.
        strategy: search strategy, a name in `trl_vlprm.guidance.strategies.STRATEGIES`.
        policy: a policy backend of `trl_vlprm.guidance.backends`: "scripted" (the testbed policy: "puzzles" or a
            `trl-vlprm puzzles` file), "hf" (transformers) or "vllm" on the model at `policy_model_path`, or a full
            spec such as "vllm:<model>,max_model_len=8192" or "server:http://host:8000/v1,model=<name>"
            (OpenAI-compatible servers).
        policy_model_path: the policy model ("hf"/"vllm"): a folder or a Hub repo id.
        policy_model_revision: branch, tag or commit of a `policy_model_path` repo id (None: "main").
        scorer: a scorer backend of `trl_vlprm.guidance.backends`: "prm" (a trained PRM at `prm_model_path`; in
            transformers, or on a vLLM pooling engine with "vllm:<folder>"), "oracle" (testbed gold step
            correctness), "random" (no-information control), "none" (greedy and majority only), or a full spec such
            as "server:http://host:8001,prm=<PRM folder>" (a PRM served by `vllm serve`).
        prm_model_path: the PRM (scorer "prm"): a folder or a Hub repo id of a PRM saved by trl_vlprm.
        prm_model_revision: branch, tag or commit of a `prm_model_path` repo id (None: "main").
        prm_step_separator: separator the PRM puts after each step; None: the one it was trained with. Independent of
            the policy's `step_separator` (steps reach the PRM as a list).
        prm_batch_size: candidates per PRM forward pass.
        perception_error_rate: scripted policy: chance a perception step misreads the image.
        reasoning_error_rate: scripted policy: chance a reasoning step slips.
        seed: seed of the puzzles, the policy's sampling and the random scorer.
        output_file: JSONL results file (resumable: a rerun skips question ids already in it; locked while written).
    """

    dataset: str = field(
        default="puzzles",
        metadata={
            "help": "'puzzles' for freshly generated testbed puzzles, or a datasets folder / .jsonl / .json / "
            ".parquet file of question records; recipes/tts.py also reads 'benchmark:<spec>', an evaluation "
            "benchmark spec such as 'benchmark:puzzlevqa:limit=50,prompt=paper'."
        },
    )
    dataset_split: str = field(
        default="test", metadata={"help": "Split to read when dataset is a DatasetDict folder."}
    )
    num_questions: int | None = field(
        default=None,
        metadata={
            "help": "Use only the first questions (all when None, 64 generated for 'puzzles'); must be >= 1 and is "
            "not pinned, so a rerun with more answers the new ones."
        },
    )
    strategy: str = field(
        default="best_of_n", metadata={"help": "Search strategy, a name in trl_vlprm.guidance.strategies.STRATEGIES."}
    )
    policy: str = field(
        default="scripted",
        metadata={
            "help": "A policy backend of trl_vlprm.guidance.backends: 'scripted' (the testbed policy: 'puzzles' or a "
            "trl-vlprm puzzles file), 'hf' (transformers) or 'vllm' on the model at policy_model_path, or a full "
            "spec such as 'vllm:<model>,max_model_len=8192' or 'server:http://host:8000/v1,model=<name>'."
        },
    )
    policy_model_path: str | None = field(
        default=None, metadata={"help": "The policy model (policy 'hf' or 'vllm'): a local folder or a Hub repo id."}
    )
    policy_model_revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of a policy_model_path repo id (None: main)."}
    )
    scorer: str = field(
        default="oracle",
        metadata={
            "help": "A scorer backend of trl_vlprm.guidance.backends: 'prm' (a trained PRM at prm_model_path), "
            "'oracle' (testbed gold step correctness), 'random' (no-information control), 'none' (greedy and "
            "majority only), or a full spec such as 'server:http://host:8001,prm=<PRM folder>'."
        },
    )
    prm_model_path: str | None = field(
        default=None, metadata={"help": "The PRM (scorer 'prm'): a local folder or a Hub repo id of a trl_vlprm PRM."}
    )
    prm_model_revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of a prm_model_path repo id (None: main)."}
    )
    prm_step_separator: str | None = field(
        default=None,
        metadata={"help": "Separator the PRM puts after each step; None uses the one it was trained with."},
    )
    prm_batch_size: int = field(default=16, metadata={"help": "Candidates per PRM forward pass."})
    perception_error_rate: float = field(
        default=0.3, metadata={"help": "Scripted policy: chance a perception step misreads the image."}
    )
    reasoning_error_rate: float = field(
        default=0.2, metadata={"help": "Scripted policy: chance a reasoning step slips."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the puzzles, the policy's sampling and the random scorer."}
    )
    output_file: str = field(
        default="outputs/tts/results.jsonl",
        metadata={
            "help": "JSONL results file; a rerun skips question ids already in it, and it is locked while written."
        },
    )

    def __post_init__(self):
        STRATEGIES.check(self.strategy, "TTSArguments.strategy")  # before any model is loaded
        models = {"policy": "policy_model_path", "scorer": "prm_model_path"}
        for name, spec, registry in (
            ("policy", self.policy_spec, POLICY_BACKENDS),
            ("scorer", self.scorer_spec, SCORER_BACKENDS),
        ):
            try:
                if (resolved := spec()) is not None:
                    check_spec(resolved, registry, name)
            except MissingModelError as err:
                hint = f"TTSArguments.{models[name]} is needed for {name} {getattr(self, name)!r}"
                raise ValueError(f"{hint} ({err})") from None
            except ValueError as err:
                raise ValueError(f"TTSArguments.{name}={getattr(self, name)!r}: {err}") from None
        if self.num_questions is not None and self.num_questions < 1:
            raise ValueError(f"TTSArguments.num_questions={self.num_questions}; must be >= 1 (or None for all)")

    def policy_spec(self) -> str:
        """The policy as one backend spec (`trl_vlprm.guidance.backends.config_policy_spec`)."""
        return config_policy_spec(self)

    def scorer_spec(self) -> str | None:
        """The scorer as one backend spec (None for "none"): `scorer` when it is a spec already or names no model,
        else the kind with `prm_model_path`, `prm_model_revision` and `prm_batch_size`."""
        if self.scorer == "none":
            return None
        if not self.prm_model_path:  # a control ("oracle", "random") or a full spec
            return spec_of(self.scorer)
        keywords = {"revision": self.prm_model_revision, "batch_size": self.prm_batch_size}
        return spec_of(self.scorer, self.prm_model_path, **keywords)

    def sampling(self) -> SamplingConfig:
        """The policy's sampling settings (a policy spec's own keywords win over them)."""
        return SamplingConfig(**self.sampling_settings(), seed=self.seed)


def build_questions(args: TTSArguments):
    """The question records `args` names (generated puzzles or a dataset file/folder)."""
    if args.dataset == "puzzles":
        from trl_vlprm.testbed import generate_puzzles

        return list(generate_puzzles(64 if args.num_questions is None else args.num_questions, seed=args.seed))
    questions = load_questions(args.dataset, args.dataset_split, args.num_questions)
    if parse_spec(args.policy_spec())[0] == "scripted":  # a `trl-vlprm puzzles` file: the puzzles' states are there
        from trl_vlprm.testbed.generator import require_puzzle_states

        require_puzzle_states(questions, args.dataset, "TTSArguments.policy")
    return questions


def build_policy(args: TTSArguments) -> Policy:
    """The policy `args.policy` names, built by `trl_vlprm.guidance.backends`."""
    return backends.build_policy(args.policy_spec(), args.seed, asdict(args.sampling()))


def build_scorer(args: TTSArguments) -> StepScorer | None:
    """The step scorer `args.scorer` names (None for "none"), built by `trl_vlprm.guidance.backends`."""
    spec = args.scorer_spec()
    if spec is None:
        return None
    # prm_step_separator None: the PRM scores with the separator it was trained on, whatever the policy's is.
    defaults = {"step_separator": args.prm_step_separator} if args.prm_step_separator is not None else {}
    return backends.build_scorer(spec, args.seed, defaults)


# Arguments that cannot change a result: where it goes, how many questions (coverage is per line), batching.
NOT_PINNED = ("output_file", "num_questions", "prm_batch_size")


def run_tags(args: TTSArguments) -> dict[str, Any]:
    """Every argument that changes results, so a resumed run into the same file must use the same ones.

    Model folders are pinned by path and by `path_fingerprint` (retraining into the same folder is another model),
    repo ids by the commit they resolve to (`model_fingerprint`), a file a backend reads by its size and mtime.
    """
    from trl_vlprm.modeling.hub import model_fingerprint

    def fingerprint(spec: str | None, registry) -> Any:
        if spec is None:
            return None
        kind, args, kwargs = parse_spec(spec)
        if len(args) == 1 and Path(args[0]).is_file():  # a file a backend reads (a replay policy's samples)
            return path_fingerprint(args[0])
        if get_backend(registry, kind).argument != "model":
            return None
        return model_fingerprint(args[0], kwargs.get("revision"))

    tags = dataclass_settings(args, exclude=NOT_PINNED)
    tags["policy_model_fingerprint"] = fingerprint(args.policy_spec(), POLICY_BACKENDS)
    tags["prm_model_fingerprint"] = fingerprint(args.scorer_spec(), SCORER_BACKENDS)
    return tags
