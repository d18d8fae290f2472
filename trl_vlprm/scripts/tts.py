"""`trl-vlprm tts`: test-time scaling, one search strategy over a dataset with a policy and a step scorer.

    trl-vlprm tts --config recipes/configs/tts_testbed.yaml
    trl-vlprm tts --config recipes/configs/tts_qwen2_5_vl.yaml --strategy dvts --n 16

Arguments: `trl_vlprm.guidance.tts.TTSArguments` and `trl_vlprm.guidance.strategies.SearchConfig`. Results go to
`output_file` (JSONL, one line per question); a rerun resumes, skipping question ids already there. A rerun with
other settings, or a second process writing the same file, stops with a one-line reason and exit code 1.
"""

from __future__ import annotations

from trl import TrlParser

from trl_vlprm.guidance.backends import parse_spec
from trl_vlprm.guidance.strategies import SearchConfig
from trl_vlprm.guidance.tts import (
    TTSArguments,
    TTSSummary,
    build_policy,
    build_questions,
    build_scorer,
    run_tags,
    run_tts,
    summary_line,
)
from trl_vlprm.scripts import command_parser
from trl_vlprm.utils.ranks import Ranks


def make_parser(prog: str | None = None) -> TrlParser:
    return command_parser((TTSArguments, SearchConfig), prog, __doc__)


def questions_of(args: TTSArguments):
    """`build_questions`, plus "benchmark:<spec>": an evaluation benchmark (the paper's subsets and prompts)."""
    if args.dataset.startswith("benchmark:"):
        from trl_vlprm.eval.specs import load_benchmark_spec

        questions = load_benchmark_spec(args.dataset.removeprefix("benchmark:"))[1]
        return questions.select(range(min(args.num_questions, len(questions)))) if args.num_questions else questions
    return build_questions(args)


def main(args: TTSArguments, search: SearchConfig) -> TTSSummary:
    """Answer every question not yet in `args.output_file`; prints and returns the summary.

    Under `accelerate launch --num_processes K` the K processes share the questions (`trl_vlprm.utils.ranks`);
    rank 0 prints the summary of the whole file once every rank is done.
    """
    ranks = Ranks.from_environment()
    questions = questions_of(args)
    policy = build_policy(args)
    scorer = build_scorer(args)
    tags = run_tags(args)
    summary = run_tts(questions, args.strategy, policy, scorer, search, args.output_file, run_tags=tags, ranks=ranks)
    if ranks.is_main:
        print(summary_line(summary, args.strategy))
        if scorer is not None and parse_spec(args.scorer_spec())[0] not in TESTBED_SCORERS:
            from trl_vlprm.eval.guardrails import tts_guard_rails
            from trl_vlprm.utils.resume import read_results

            lines = read_results(args.output_file, repair=False)
            for line in tts_guard_rails(lines, list(questions), scorer, args.scorer, search.n):
                print(line)
    return summary


# Scorers that know the testbed's truth or nothing at all: no guard-rail to print for them.
TESTBED_SCORERS = ("oracle", "noisy_oracle", "random")
