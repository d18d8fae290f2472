"""Build a stepwise-supervision dataset (Parquet shards with an Image feature) from question records.

Questions not yet labelled are cut into chunks of `shard_size`; each chunk becomes a shard (`labeling.shards`):
`shard-{i:05d}.json`, a sidecar recording exactly which question ids it covers and a content digest of each, then
`shard-{i:05d}.parquet`, both written atomically. A rerun verifies every shard (footer readable, row count equal to
its sidecar's; a failing shard is moved aside and its questions labelled again), refuses questions whose content
changed, and labels every id not yet covered: growing `num_questions` or appending to the questions file labels the
new questions, and an interruption (even SIGKILL) loses nothing and writes nothing twice. `labelling_config.json`
pins the settings that change a record; a rerun with other settings is refused. A shard on which the judge failed
(all solutions, or more than `judge_max_failed_share` of them) is not written and the run stops with the reason.

Entry points: `build_dataset(questions, policy, config)`, and `run(config)` (`trl-vlprm label ...`,
`recipes/build_dataset.py`), which labels `LabelConfig.rollouts_file` through `trl_vlprm.labeling.importing` when
one is given. The folder's shards, pins and resume checks are `trl_vlprm.labeling.shards`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from trl_vlprm.data.answers import Grader
from trl_vlprm.data.schema import question_ids, solution_id
from trl_vlprm.guidance.backends import build_policy, parse_spec
from trl_vlprm.labeling.batch_judge import BATCH_DIR, BatchJudge, batch_cost
from trl_vlprm.labeling.combine import RULES
from trl_vlprm.labeling.config import LabelConfig
from trl_vlprm.labeling.importing import import_dataset
from trl_vlprm.labeling.judge import JudgeClient, JudgeConfig
from trl_vlprm.labeling.labeler import (
    BatchStats,
    check_judge_failures,
    count_verdicts,
    judge_items,
    label_batch,
    label_solutions,
    roll_out,
    solutions_from_json,
    solutions_to_json,
)
from trl_vlprm.labeling.noise import save_noise_report
from trl_vlprm.labeling.shards import CONFIG_FILE, folder_stats, plan_shards, write_shard
from trl_vlprm.testbed.judge_server import JudgeServer
from trl_vlprm.utils.ranks import SINGLE, Ranks, RunClaim
from trl_vlprm.utils.resume import atomic_write_text, question_digest, stable_digest
from trl_vlprm.utils.trackers import log_tables

__all__ = ["batch_cost_line", "build_dataset", "run", "stats_tables", "summary_line"]


def build_dataset(
    questions,
    policy,
    config: LabelConfig,
    judge_server: JudgeServer | None = None,
    grader: Grader | None = None,
    judge_config: JudgeConfig | None = None,
    ranks: Ranks | None = None,
) -> BatchStats:
    """Label every question not yet covered by a shard of `config.output_dir`; return the stats of all shards there.

    Questions are matched to shards by id, and each covered question's content digest must equal the one its shard
    recorded (otherwise a `RecordError` names it). New questions (a grown `num_questions`, an appended questions
    file) and the questions of shards rejected by `verify_shard` go into new shards. Raises `JudgeFailureError`
    (before writing that shard) when the judge fails on too many solutions.

    `judge_server` replaces the "testbed" judge by a started `JudgeServer` of the caller's (e.g. one that fails);
    `grader` the default answer grader `trl_vlprm.data.answers.grade`; `judge_config` says how the judge is reached
    (default `JudgeConfig()`; the URL of a testbed or given `judge_server` replaces its `judge_base_url`).
    `ranks` shares the work among the processes of a launch (`trl_vlprm.utils.ranks`): rank 0 plans the new shards
    under the folder's lock, each rank labels every K-th of them, and rank 0 returns the stats of the whole folder
    once all are done (the others, their own).
    """
    ranks = ranks or SINGLE
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    judge_config = judge_config or JudgeConfig()
    ids = question_ids(questions, "labelling")
    digests = [question_digest(question) for question in questions]
    pins = config.pinned(judge_config)
    planned = ranks.claimed_plan(
        output_dir / CONFIG_FILE, lambda: plan_shards(output_dir, pins, ids, digests, config.shard_size)
    )
    with planned as (plan, claim):
        mine = ranks.share(plan)
        ranks.log(f"labelling {sum(len(chunk) for _, chunk in mine)} questions in {len(mine)} shards")
        own = _label_shards(questions, ids, digests, mine, policy, config, judge_config, judge_server, grader, claim)
        ranks.wait_for_all("labelling")
        if not ranks.is_main:
            return own
        total = folder_stats(output_dir)
        save_noise_report(output_dir, total.noise)
    return total


def _label_shards(
    questions, ids, digests, plan, policy, config, judge_config, judge_server, grader, claim: RunClaim
) -> BatchStats:
    """Label and write the shards of `plan` (this rank's share); the stats of what was written.

    Each shard is written under the run's claim (`RunClaim.writing`): a rank whose group was lost (rank 0 died with
    its node, a rerun took the folder over) stops before writing, since the rerun may have planned its questions
    too."""
    ranks = claim.ranks
    output_dir = Path(config.output_dir)
    strong = None
    if config.strong_completer is not None:  # its own seed: its completions must not repeat the policy's
        strong = build_policy(config.strong_completer, config.seed + 1, config.sampling_settings())
    server = judge_server
    own_server = False
    judge = None
    batch_judge = RULES.get(config.rule).needs_judge and config.judge == "batch"
    if batch_judge:  # a given testbed server is only taught the rollouts' gold: the batch server answers from it
        judge = BatchJudge(judge_config, output_dir / BATCH_DIR, show_progress=config.show_progress)
    elif RULES.get(config.rule).needs_judge:
        if server is None and config.judge == "testbed":
            server, own_server = (
                JudgeServer(
                    {}, config.judge_flip_rate_perception, config.judge_flip_rate_reasoning, seed=config.seed
                ).start(),
                True,
            )
        if server is not None:
            judge_config = replace(judge_config, judge_base_url=server.base_url)
        judge = JudgeClient(judge_config, seed=config.seed)
    if server is not None:  # a testbed judge learns each sampled solution's gold from the policy
        policy = server.teaching(policy)
    total = BatchStats()
    rank = f" (rank {ranks.rank}/{ranks.world_size})" if ranks.world_size > 1 else ""
    bar = tqdm(
        total=sum(len(chunk) for _, chunk in plan),
        desc=f"label {config.rule}{rank}",
        unit="q",
        disable=not config.show_progress,
    )
    try:
        for index, chunk in plan:
            claim.ensure(f"shard {index}")  # before paying for its rollouts
            batch = [questions[j] for j in chunk]
            if batch_judge:
                rows, stats = _label_with_batch_judge(
                    batch, [digests[j] for j in chunk], policy, config, judge, server, grader, strong
                )
            else:
                rows, stats = label_batch(
                    batch,
                    policy,
                    config.rule,
                    config.num_rollouts,
                    config.mc_config(),
                    judge,
                    grader=grader,
                    strong_completer=strong,
                    **config.combination_settings(),
                )
            if judge is not None:
                check_judge_failures(judge, stats, [ids[j] for j in chunk], config.judge_max_failed_share)
            with claim.writing(f"shard {index}"):
                write_shard(output_dir, index, rows, stats, [ids[j] for j in chunk], [digests[j] for j in chunk])
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
    return total


def _label_with_batch_judge(batch, digests, policy, config, judge, server, grader, strong=None):
    """One shard's rows with the batch judge: the rollouts and MC labels are saved before their requests are
    submitted, so a rerun after an interruption judges the same solutions (it polls the batch already submitted)."""
    key = "shard-" + stable_digest([[str(q["id"]) for q in batch], list(digests)])[:16]
    path = Path(config.output_dir) / BATCH_DIR / f"{key}.solutions.json"
    if path.exists():
        solutions, stats = solutions_from_json(json.loads(path.read_text()), batch, path)
        for question, _, rollout, _ in solutions if server is not None else []:
            server.add_solution(str(question["id"]), rollout.steps, rollout.gold_correct)
    else:
        solutions, stats = roll_out(batch, policy, config.num_rollouts, config.mc_config(), grader, strong)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(solutions_to_json(solutions, stats)))
    custom_ids = [solution_id(str(question["id"]), j) for question, j, _, _ in solutions]
    verdicts = judge.judge_many(judge_items(solutions), custom_ids, key)
    count_verdicts(stats, verdicts)
    return label_solutions(solutions, verdicts, config.rule, stats, **config.combination_settings()), stats


def _make_policy_and_questions(config: LabelConfig):
    questions = config.questions()
    spec = config.policy_spec()
    if config.dataset != "puzzles" and parse_spec(spec)[0] == "scripted":  # a `trl-vlprm puzzles` file has states
        from trl_vlprm.testbed.generator import require_puzzle_states

        require_puzzle_states(questions, config.dataset, "LabelConfig.policy")
    return build_policy(spec, config.seed, config.sampling_settings()), questions


def summary_line(stats: BatchStats) -> str:
    calls = stats.rollout_cost.calls + stats.mc_cost.calls
    return (
        f"{stats.records} records from {stats.solutions} solutions ({stats.dropped_solutions} dropped); "
        f"{stats.steps_labelled}/{stats.steps_total} steps labelled; policy calls {calls} "
        f"({calls / max(1, stats.steps_labelled):.2f} per labelled step), tokens "
        f"{stats.rollout_cost.tokens + stats.mc_cost.tokens}; judge {dict(stats.judge)}; cases {dict(stats.cases)}"
    )


def run(config: LabelConfig, judge_config: JudgeConfig | None = None) -> BatchStats:
    """Build the dataset `config` describes (questions, policy and judge made from it) and return the stats.

    Under `accelerate launch --num_processes K` the K processes share the new shards (`trl_vlprm.utils.ranks`); the
    stats returned are those of the whole folder once every rank is done.
    """
    ranks = Ranks.from_environment()
    if config.rollouts_file is not None:  # imported rollouts: one process labels them
        stats = import_dataset(config, judge_config) if ranks.is_main else BatchStats()
    else:
        policy, questions = _make_policy_and_questions(config)
        stats = build_dataset(questions, policy, config, judge_config=judge_config, ranks=ranks)
    if ranks.is_main:
        log_tables(
            config.report_to,
            stats_tables(stats),
            Path(config.output_dir) / "runs",
            project="trl_vlprm-label",
            config=config.pinned(judge_config),
        )
    return stats


def stats_tables(stats: BatchStats) -> dict[str, list[dict]]:
    """The labelling's tables for trackers: one summary row (counts and costs) and the solutions per rule case."""
    summary = {
        "solutions": stats.solutions,
        "records": stats.records,
        "dropped_solutions": stats.dropped_solutions,
        "steps_total": stats.steps_total,
        "steps_labelled": stats.steps_labelled,
        "rollout_tokens": stats.rollout_cost.tokens,
        "mc_tokens": stats.mc_cost.tokens,
        "judge_requests": stats.judge.get("requests", 0),
    }
    cases = [{"case": case, "solutions": count} for case, count in sorted(stats.cases.items())]
    return {"labelling_summary": [summary], "labelling_cases": cases}


def batch_cost_line(stats: BatchStats, judge_config: JudgeConfig) -> str:
    """The batch judge's tokens and their cost at the configured prices (stated, since prices change)."""
    prompt, completion = stats.judge.get("prompt_tokens", 0), stats.judge.get("completion_tokens", 0)
    cost = batch_cost(judge_config, prompt, completion)
    return (
        f"batch judge: {stats.judge.get('requests', 0)} requests, {prompt} prompt + {completion} completion tokens, "
        f"${cost:.4f} at ${judge_config.judge_input_price_per_mtok} / ${judge_config.judge_output_price_per_mtok} "
        f"per million tokens (${cost / max(1, stats.steps_labelled):.6f} per labelled step)"
    )
