"""Build a stepwise-supervision dataset (Parquet shards with an Image feature) from question records.

Questions not yet labelled are cut into chunks of `shard_size`; each chunk becomes a shard (`labeling.shards`):
`shard-{i:05d}.json`, a sidecar recording exactly which question ids it covers and a content digest of each, then
`shard-{i:05d}.parquet`, both written atomically. A rerun verifies every shard (footer readable, row count equal to
its sidecar's; a failing shard is moved aside and its questions labelled again), refuses questions whose content
changed, and labels every id not yet covered: growing `num_questions` or appending to the questions file labels the
new questions, and an interruption (even SIGKILL) loses nothing and writes nothing twice. `labelling_config.json`
pins the settings that change a record; a rerun with other settings is refused. A shard on which the judge failed
(all solutions, or more than `judge_max_failed_share` of them) is not written and the run stops with the reason.

Entry points: `build_dataset(questions, policy, config)` and `main(argv)` (`trl-vlprm label ...`,
`recipes/build_dataset.py`).
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trl_vlprm.data.schema import RecordError
from trl_vlprm.labeling.combine import NEEDS_JUDGE, NEEDS_MC, RULES, UNKNOWN_POLICIES
from trl_vlprm.labeling.judge import JudgeClient, JudgeConfig
from trl_vlprm.labeling.judge_server import JudgeServer
from trl_vlprm.labeling.labeler import BatchStats, label_batch
from trl_vlprm.labeling.mc import MC_MODES, Grader, MCConfig
from trl_vlprm.labeling.shards import (
    SHARD_PATTERN,
    ShardError,
    ShardInfo,
    load_labelled,
    output_features,
    shard_files,
    verify_shard,
    write_shard,
)
from trl_vlprm.utils.resume import (
    OutputLockedError,
    SettingsMismatchError,
    dataclass_settings,
    output_lock,
    pin_settings,
    question_digest,
)

__all__ = ["LabelConfig", "JudgeFailureError", "build_dataset", "load_labelled", "main", "output_features", "run"]

CONFIG_FILE = "labelling_config.json"


@dataclass
class LabelConfig:
    """Arguments of `trl-vlprm label` / `recipes/build_dataset.py`.

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
        policy: "scripted" (testbed policy; "puzzles" only) or "hf" (transformers model at `policy_model_path`).
        policy_model_path: local folder of the policy model ("hf").
        perception_error_rate / reasoning_error_rate: error rates of the scripted policy.
        temperature: sampling temperature of the "hf" policy.
        max_new_tokens: token budget of a solution ("hf").
        step_separator: text ending a step ("hf").
        judge: "server" (an OpenAI-compatible endpoint at `judge_base_url`), "testbed" (an in-process
            `JudgeServer` answering from the scripted policy's gold with the noise below) or "none".
        judge_base_url / judge_model / judge_api_key_env / judge_timeout / judge_max_retries / judge_backoff /
            judge_max_concurrency: see `trl_vlprm.labeling.judge.JudgeConfig` (validated there).
        judge_max_failed_share: a shard on whose solutions the judge failed for more than this share (or for all of
            them) is not written and the run stops naming the errors; 1.0 stops only when every call failed.
        judge_flip_rate_perception / judge_flip_rate_reasoning: noise of the "testbed" judge.
        seed: seed of the puzzles, the scripted policy and the testbed judge.
        show_progress: show a tqdm bar with the running costs.
    """

    dataset: str = "puzzles"
    dataset_split: str = "train"
    num_questions: int | None = None
    output_dir: str = "outputs/labels"
    shard_size: int = 64
    rule: str = "consensus"
    disagreement: str = "drop"
    disagreement_weight: float = 0.5
    judge_unknown: str = "keep_prefix"
    num_rollouts: int = 4
    mc_mode: str = "binary_search"
    mc_num_completions: int = 8
    mc_threshold: float = 0.0
    policy: str = "scripted"
    policy_model_path: str | None = None
    perception_error_rate: float = 0.15
    reasoning_error_rate: float = 0.1
    temperature: float = 0.7
    max_new_tokens: int = 512
    step_separator: str = "\n\n"
    judge: str = "testbed"
    judge_base_url: str = "http://127.0.0.1:8000/v1"
    judge_model: str = "judge"
    judge_api_key_env: str = "JUDGE_API_KEY"
    judge_timeout: float = 60.0
    judge_max_retries: int = 3
    judge_backoff: float = 1.0
    judge_max_concurrency: int = 8
    judge_max_failed_share: float = 0.5
    judge_flip_rate_perception: float = 0.15
    judge_flip_rate_reasoning: float = 0.1
    seed: int = 0
    show_progress: bool = field(default=True)

    def __post_init__(self):
        checks = {
            "rule": RULES,
            "mc_mode": MC_MODES,
            "policy": ("scripted", "hf"),
            "judge": ("server", "testbed", "none"),
            "disagreement": ("drop", "weight"),
            "judge_unknown": UNKNOWN_POLICIES,
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"LabelConfig.{name}={getattr(self, name)!r}; expected one of {allowed}")
        if self.rule in NEEDS_JUDGE and self.judge == "none":
            raise ValueError(f"LabelConfig.rule={self.rule!r} needs a judge but judge='none'")
        if self.judge == "testbed" and self.policy != "scripted":
            raise ValueError("LabelConfig.judge='testbed' answers from gold only the scripted policy knows")
        if self.policy == "hf" and not self.policy_model_path:
            raise ValueError("LabelConfig.policy_model_path is needed for policy 'hf'")
        if self.shard_size < 1 or self.num_rollouts < 1:
            raise ValueError("LabelConfig.shard_size and num_rollouts must be >= 1")
        if self.num_questions is not None and self.num_questions < 1:
            raise ValueError(f"LabelConfig.num_questions={self.num_questions}; must be >= 1 (or None for all)")
        if not 0.0 <= self.judge_max_failed_share <= 1.0:
            raise ValueError(f"LabelConfig.judge_max_failed_share={self.judge_max_failed_share}; must be in [0, 1]")
        self.judge_config()  # JudgeConfig validates timeout, retries, backoff and concurrency

    def mc_config(self) -> MCConfig | None:
        if self.rule not in NEEDS_MC:
            return None
        return MCConfig(self.mc_num_completions, self.mc_threshold, self.mc_mode)

    def judge_config(self, base_url: str | None = None) -> JudgeConfig:
        return JudgeConfig(
            base_url=base_url or self.judge_base_url,
            model=self.judge_model,
            api_key_env=self.judge_api_key_env,
            timeout=self.judge_timeout,
            max_retries=self.judge_max_retries,
            backoff=self.judge_backoff,
            max_concurrency=self.judge_max_concurrency,
        )

    def pinned(self) -> dict[str, Any]:
        """Settings a resumed run must share (everything that changes what a record holds).

        Left out: where and how the work is done (output folder, progress bar) and how the judge is reached (timeout,
        retries, backoff, concurrency, key variable, failure share), which a user changes to get past a failing
        judge; and `num_questions`, since which questions are covered is recorded per shard.
        """
        return dataclass_settings(self, exclude=_NOT_PINNED)


_NOT_PINNED = (
    "output_dir", "show_progress", "num_questions", "judge_timeout", "judge_max_retries", "judge_backoff",
    "judge_max_concurrency", "judge_api_key_env", "judge_max_failed_share",
)  # fmt: skip


class JudgeFailureError(RuntimeError):
    """The judge failed on too many solutions of a shard; the shard was not written (see `LabelConfig`)."""


def _check_ids(questions) -> list[str]:
    ids, seen = [], set()
    for row, question in enumerate(questions):
        qid = question.get("id")
        if qid is None or str(qid) == "":
            raise RecordError(row, "id", "missing; labelling needs an id per question")
        if str(qid) in seen:
            raise RecordError(row, "id", f"duplicate id {qid!r}")
        seen.add(str(qid))
        ids.append(str(qid))
    return ids


def _trusted_shards(output_dir: Path) -> tuple[list[ShardInfo], int]:
    """Every finished shard that passes `verify_shard`, and the first free shard index.

    A shard that fails (a truncated or replaced Parquet file, a sidecar that disagrees) is moved aside as
    `*.rejected` with a warning naming it; its questions are then simply not covered and get labelled again.
    """
    trusted, next_index = [], 0
    for path in shard_files(output_dir):
        index = int(SHARD_PATTERN.fullmatch(path.name).group(1))
        next_index = max(next_index, index + 1)
        try:
            trusted.append(verify_shard(path))
        except ShardError as err:
            for bad in (path, path.with_suffix(".json")):
                if bad.exists():
                    os.replace(bad, bad.with_name(bad.name + ".rejected"))
            warnings.warn(
                f"{err}; moved aside as {path.name}.rejected, its questions are labelled again", stacklevel=3
            )
    for rejected in output_dir.glob("shard-*.parquet.rejected"):  # never reuse the index of a rejected shard
        next_index = max(next_index, int(rejected.name.split("-")[1].split(".")[0]) + 1)
    return trusted, next_index


def _covered_questions(shards: list[ShardInfo], ids: list[str], digests: list[str]) -> set[str]:
    """Ids already labelled; refuses a question whose content changed since (or that two shards both cover)."""
    covered: dict[str, tuple[str, Path]] = {}
    for shard in shards:
        for qid, digest in zip(shard.question_ids, shard.question_digests):
            if qid in covered:
                raise ShardError(f"question {qid!r} is covered by both {covered[qid][1]} and {shard.path}")
            covered[qid] = (digest, shard.path)
    for row, (qid, digest) in enumerate(zip(ids, digests)):
        if qid in covered and covered[qid][0] != digest:
            raise RecordError(
                row,
                qid,
                f"this question's content changed since {covered[qid][1].name} labelled it (digest "
                f"{covered[qid][0][:12]} -> {digest[:12]}); restore the old inputs or label into another output_dir",
            )
    return set(covered)


def _check_judge(config: LabelConfig, judge: JudgeClient, stats: BatchStats, batch_ids: list[str]) -> None:
    """Raise `JudgeFailureError` when the judge failed on all, or more than the allowed share, of a batch's
    solutions: such a shard would hold no (or few) labels for reasons that have nothing to do with the data."""
    judged, failed = stats.judge["judged_solutions"], stats.judge["failed_solutions"]
    if not failed or (failed < judged and failed / judged <= config.judge_max_failed_share):
        return
    errors = {k[len("error ") :]: v for k, v in stats.judge.items() if k.startswith("error ")}
    samples = "; ".join(f"{kind!r}: {text}" for kind, text in judge.error_samples.items())
    raise JudgeFailureError(
        f"the judge at {judge.config.base_url} failed on {failed} of {judged} solutions of questions "
        f"{batch_ids[0]}..{batch_ids[-1]} (allowed share {config.judge_max_failed_share}); errors {errors}; "
        f"first reply of each kind: {samples or 'none'}. Nothing of these questions was written: fix the judge "
        "and rerun (finished shards are kept)."
    )


def build_dataset(
    questions, policy, config: LabelConfig, judge_server: JudgeServer | None = None, grader: Grader | None = None
) -> BatchStats:
    """Label every question not yet covered by a shard of `config.output_dir`; return the stats of all shards there.

    Questions are matched to shards by id, and each covered question's content digest must equal the one its shard
    recorded (otherwise a `RecordError` names it). New questions (a grown `num_questions`, an appended questions
    file) and the questions of shards rejected by `verify_shard` go into new shards. Raises `JudgeFailureError`
    (before writing that shard) when the judge fails on too many solutions.

    `judge_server` replaces the "testbed" judge by a started `JudgeServer` of the caller's (e.g. one that fails);
    `grader` the default answer grader `trl_vlprm.data.answers.grade`.
    """
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(output_dir / CONFIG_FILE):
        pin_settings(output_dir / CONFIG_FILE, config.pinned())
        ids = _check_ids(questions)
        digests = [question_digest(question) for question in questions]
        for stale in output_dir.glob(".shard-*.tmp"):  # left by a run killed mid-write; never a finished shard
            stale.unlink()
        shards, next_index = _trusted_shards(output_dir)
        covered = _covered_questions(shards, ids, digests)
        todo = [j for j, qid in enumerate(ids) if qid not in covered]
        total = BatchStats()
        for shard in shards:
            total.add(shard.stats)
        _label_missing(questions, ids, digests, todo, next_index, policy, config, total, judge_server, grader)
    return total


def _label_missing(questions, ids, digests, todo, next_index, policy, config, total, judge_server, grader) -> None:
    output_dir = Path(config.output_dir)
    server, own_server, judge = judge_server, False, None
    if config.rule in NEEDS_JUDGE:
        if server is None and config.judge == "testbed":
            server, own_server = (
                JudgeServer(
                    {}, config.judge_flip_rate_perception, config.judge_flip_rate_reasoning, seed=config.seed
                ).start(),
                True,
            )
        judge = JudgeClient(config.judge_config(server.base_url if server else None), seed=config.seed)
    bar = tqdm(
        total=len(ids), initial=len(ids) - len(todo), desc=f"label {config.rule}", unit="q",
        disable=not config.show_progress,
    )  # fmt: skip
    try:
        for k, start in enumerate(range(0, len(todo), config.shard_size)):
            chunk = todo[start : start + config.shard_size]
            batch = [questions[j] for j in chunk]
            rows, stats = label_batch(
                batch,
                policy,
                config.rule,
                config.num_rollouts,
                config.mc_config(),
                judge,
                server,
                grader=grader,
                disagreement=config.disagreement,
                disagreement_weight=config.disagreement_weight,
                judge_unknown=config.judge_unknown,
            )
            if judge is not None:
                _check_judge(config, judge, stats, [ids[j] for j in chunk])
            write_shard(output_dir, next_index + k, rows, stats, [ids[j] for j in chunk], [digests[j] for j in chunk])
            total.add(stats)
            bar.update(len(batch))
            bar.set_postfix(
                records=total.records,
                policy_calls=total.rollout_cost.calls + total.mc_cost.calls,
                tokens=total.rollout_cost.tokens + total.mc_cost.tokens,
                judge_requests=total.judge.get("requests", 0),
                unknown_steps=total.judge.get("steps unknown", 0),
            )
    finally:
        bar.close()
        if own_server:
            server.stop()


def _make_policy_and_questions(config: LabelConfig):
    if config.dataset == "puzzles":
        from trl_vlprm.data.puzzles import generate_puzzles

        questions = generate_puzzles(64 if config.num_questions is None else config.num_questions, seed=config.seed)
    else:
        from trl_vlprm.guidance.tts import load_questions

        questions = load_questions(config.dataset, config.dataset_split, config.num_questions)
    if config.policy == "scripted":
        if config.dataset != "puzzles":
            raise ValueError("LabelConfig.policy='scripted' only solves dataset='puzzles'")
        from trl_vlprm.data.puzzles import ScriptedPolicy

        policy = ScriptedPolicy(
            perception_error_rate=config.perception_error_rate,
            reasoning_error_rate=config.reasoning_error_rate,
            seed=config.seed,
        )
    else:
        from trl_vlprm.guidance.hf_policy import HFPolicy

        policy = HFPolicy.from_pretrained(
            config.policy_model_path,
            step_separator=config.step_separator,
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
        )
    return policy, questions


def summary_line(stats: BatchStats) -> str:
    calls = stats.rollout_cost.calls + stats.mc_cost.calls
    return (
        f"{stats.records} records from {stats.solutions} solutions ({stats.dropped_solutions} dropped); "
        f"{stats.steps_labelled}/{stats.steps_total} steps labelled; policy calls {calls} "
        f"({calls / max(1, stats.steps_labelled):.2f} per labelled step), tokens "
        f"{stats.rollout_cost.tokens + stats.mc_cost.tokens}; judge {dict(stats.judge)}; cases {dict(stats.cases)}"
    )


def run(config: LabelConfig) -> BatchStats:
    """Build the dataset `config` describes (questions, policy and judge made from it); print and return the stats."""
    policy, questions = _make_policy_and_questions(config)
    stats = build_dataset(questions, policy, config)
    print(summary_line(stats))
    return stats


def main(argv: list[str] | None = None) -> None:
    """CLI: `trl-vlprm label --config recipes/configs/label_testbed.yaml [--field value ...]`."""
    from trl import TrlParser

    (config,) = TrlParser((LabelConfig,)).parse_args_and_config(args=argv)
    try:
        run(config)
    except (JudgeFailureError, SettingsMismatchError, OutputLockedError, ShardError, RecordError) as err:
        # a clear one-line reason and a non-zero exit; the finished shards stay for the rerun
        print(f"trl-vlprm label: {err}", file=sys.stderr)
        raise SystemExit(1) from err
