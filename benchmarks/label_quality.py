"""Step-label quality of MC-only, judge-only and hybrid rules on the testbed, where gold step labels are known.

    python benchmarks/label_quality.py                       # the table in docs/labelling.md
    python benchmarks/label_quality.py --num_questions 100 --mc_num_completions 4

Every method labels the *same* rollouts of the scripted policy. The judge is the batch judge (the official `openai`
client on the Files and Batches endpoints) talking to a `BatchServer` on loopback whose lines a `JudgeServer` answers
from gold with per-step-type flip noise (`--judge_prompt paper` asks and reads the paper's prompt). Columns: accuracy
and F1 of the bad-step class over the steps a method labels, coverage (labelled / all steps), policy calls (batched
requests of K completions; rollout sampling included) and judge requests per labelled step, and the batch judge's
dollars per kept label (labelled step) at the stated batch prices. The testbed server reports a request's tokens as
its JSON bytes / 4 (the inline PNG included) and an answer's as its characters / 4: the cost column compares rules
on one basis, it is not a price forecast (docs/labelling.md has one, from the paper's own requests).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence

from trl_vlprm.data.schema import solution_id
from trl_vlprm.labeling.batch_judge import BatchJudge, batch_cost
from trl_vlprm.labeling.combine import combine
from trl_vlprm.labeling.judge import JudgeConfig
from trl_vlprm.labeling.labeler import step_label_quality
from trl_vlprm.labeling.mc import Cost, MCConfig, label_rollout, sample_rollouts
from trl_vlprm.testbed.batch_server import BatchServer, judge_responder
from trl_vlprm.testbed.judge_server import JudgeServer, gold_lookup

METHODS = [
    # (name, rule, MC mode or None)
    ("MC only, every step", "mc_only", "every_step"),
    ("MC only, binary search", "mc_only", "binary_search"),
    ("judge only", "judge_only", None),
    ("consensus (drop), every step", "consensus", "every_step"),
    ("consensus (drop), binary search", "consensus", "binary_search"),
    ("judge first error + MC confirms", "judge_first_error_confirmed_by_mc", "binary_search"),
    ("hybrid: vlprm rule, every step", "vlprm", "every_step"),
    ("hybrid: vlprm rule, binary search", "vlprm", "binary_search"),
]


def run(args: argparse.Namespace) -> list[dict]:
    from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles

    questions = list(generate_puzzles(args.num_questions, seed=args.seed))
    policy = ScriptedPolicy(
        perception_error_rate=args.perception_error_rate,
        reasoning_error_rate=args.reasoning_error_rate,
        seed=args.seed,
    )
    solutions, rollout_cost = [], Cost()
    for question in questions:
        rollouts, cost = sample_rollouts(policy, question, args.num_rollouts)
        rollout_cost.add(cost)
        solutions += [(question, r) for r in rollouts]

    mc: dict[str, list] = {}
    mc_cost: dict[str, Cost] = {}
    for mode in ("every_step", "binary_search"):
        config = MCConfig(args.mc_num_completions, args.mc_threshold, mode)
        mc[mode] = [label_rollout(policy, q, r, config) for q, r in solutions]
        mc_cost[mode] = Cost()
        for result in mc[mode]:
            mc_cost[mode].add(result.cost)

    gold = {}
    for question, rollout in solutions:
        gold.update(gold_lookup(str(question["id"]), rollout.steps, rollout.gold_correct))
    judge_server = JudgeServer(gold, args.judge_flip_rate_perception, args.judge_flip_rate_reasoning, seed=args.seed)
    with BatchServer(judge_responder(judge_server)) as server, tempfile.TemporaryDirectory() as state:
        config = JudgeConfig(
            judge_base_url=server.base_url, judge_batch_poll_seconds=0.0, judge_prompt=args.judge_prompt
        )
        items = [(q, r.steps, r.step_types, r.answer) for q, r in solutions]
        ids = [solution_id(q["id"], k) for k, (q, _) in enumerate(solutions)]
        judged = BatchJudge(config, state, show_progress=False).judge_many(items, ids, "label-quality")
    prompt_tokens = sum(j.prompt_tokens for j in judged)
    completion_tokens = sum(j.completion_tokens for j in judged)
    judge_cost = batch_cost(config, prompt_tokens, completion_tokens)

    rows = []
    for name, rule, mode in METHODS:
        pairs, labelled = [], 0
        for k, (_, rollout) in enumerate(solutions):
            combined = combine(
                rule,
                len(rollout.steps),
                mc[mode][k].labels if mode else None,
                judged[k].verdicts if rule != "mc_only" else None,
            )
            kept = combined.kept_length()
            labelled += kept
            pairs.append((combined.labels[:kept], rollout.gold_correct))
        quality = step_label_quality(pairs)
        calls = rollout_cost.calls + (mc_cost[mode].calls if mode else 0)
        judge_requests = sum(j.attempts for j in judged) if rule != "mc_only" else 0
        rows.append(
            {
                "method": name,
                "accuracy": quality.accuracy,
                "bad_f1": quality.bad_f1,
                "coverage": quality.coverage,
                "calls_per_step": calls / max(1, labelled),
                "sequences_per_step": (rollout_cost.sequences + (mc_cost[mode].sequences if mode else 0))
                / max(1, labelled),
                "judge_per_step": judge_requests / max(1, labelled),
                "judge_dollars_per_label": (judge_cost if rule != "mc_only" else 0.0) / max(1, labelled),
            }
        )
    gold_bad = sum(not g for _, r in solutions for g in r.gold_correct)
    total = sum(len(r.steps) for _, r in solutions)
    print(
        f"{len(questions)} puzzles x {args.num_rollouts} rollouts = {len(solutions)} solutions, {total} steps "
        f"({gold_bad / total:.1%} bad); rollouts right: {sum(r.correct for _, r in solutions) / len(solutions):.1%}; "
        f"K={args.mc_num_completions}; judge flips perception {args.judge_flip_rate_perception}, reasoning "
        f"{args.judge_flip_rate_reasoning}; batch judge ({args.judge_prompt} prompt): {len(judged)} requests, "
        f"{prompt_tokens} prompt + {completion_tokens} completion tokens (testbed counts), ${judge_cost:.4f} at "
        f"${config.judge_input_price_per_mtok} / ${config.judge_output_price_per_mtok} per million tokens"
    )
    return rows


def format_table(rows: Sequence[dict]) -> str:
    columns = ["method", "step accuracy", "bad-step F1", "coverage", "policy calls / step", "sequences / step"]
    lines = ["| " + " | ".join([*columns, "judge req. / step", "judge $ / kept label"]) + " |", "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['accuracy']:.3f} | {r['bad_f1']:.3f} | {r['coverage']:.3f} | "
            f"{r['calls_per_step']:.3f} | {r['sequences_per_step']:.2f} | {r['judge_per_step']:.3f} | "
            f"{r['judge_dollars_per_label']:.2e} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_questions", type=int, default=200)
    parser.add_argument("--num_rollouts", type=int, default=4)
    parser.add_argument("--mc_num_completions", type=int, default=8)
    parser.add_argument("--mc_threshold", type=float, default=0.0)
    parser.add_argument("--perception_error_rate", type=float, default=0.15)
    parser.add_argument("--reasoning_error_rate", type=float, default=0.1)
    parser.add_argument("--judge_flip_rate_perception", type=float, default=0.15)
    parser.add_argument("--judge_flip_rate_reasoning", type=float, default=0.1)
    parser.add_argument("--judge_prompt", default="json", choices=["json", "paper"])
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    start = time.monotonic()
    table = format_table(run(parse_args()))
    print(table)
    print(f"({time.monotonic() - start:.1f} s)")
