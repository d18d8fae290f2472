"""Test-time scaling: run one search strategy over a dataset with a policy and a step scorer.

    python recipes/tts.py --config recipes/configs/tts_testbed.yaml
    python recipes/tts.py --config recipes/configs/tts_qwen2_5_vl.yaml --strategy dvts --n 16

Arguments: `trl_vlprm.guidance.tts.TTSArguments` and `trl_vlprm.guidance.strategies.SearchConfig`. Results go to
`output_file` (JSONL, one line per question); a rerun resumes, skipping question ids already there. A rerun with
other settings, or a second process writing the same file, stops with a one-line reason and exit code 1.
`accelerate launch --multi_gpu --num_processes K recipes/tts.py ...` shares the questions among K processes.
"""

import sys

from trl import TrlParser

from trl_vlprm.data.schema import RecordError
from trl_vlprm.guidance.strategies import SearchConfig
from trl_vlprm.guidance.tts import (
    TTSArguments,
    build_policy,
    build_questions,
    build_scorer,
    run_tags,
    run_tts,
    summary_line,
)
from trl_vlprm.utils.ranks import RankFailedError, Ranks
from trl_vlprm.utils.resume import OutputLockedError, SettingsMismatchError


def questions_of(args: TTSArguments):
    """`build_questions`, plus "benchmark:<spec>": an evaluation benchmark (the paper's subsets and prompts)."""
    if args.dataset.startswith("benchmark:"):
        from trl_vlprm.eval.sweep_config import load_benchmark_spec

        questions = load_benchmark_spec(args.dataset.removeprefix("benchmark:"))[1]
        return questions.select(range(min(args.num_questions, len(questions)))) if args.num_questions else questions
    return build_questions(args)


def main(args: TTSArguments, search: SearchConfig):
    ranks = Ranks.from_environment()  # `accelerate launch --num_processes K`: the K processes share the questions
    questions, policy, scorer = questions_of(args), build_policy(args), build_scorer(args)
    tags = run_tags(args)
    summary = run_tts(questions, args.strategy, policy, scorer, search, args.output_file, run_tags=tags, ranks=ranks)
    if ranks.is_main:
        print(summary_line(summary, args.strategy))
    return summary


if __name__ == "__main__":
    try:
        main(*TrlParser((TTSArguments, SearchConfig)).parse_args_and_config())
    except (OutputLockedError, SettingsMismatchError, RecordError, RankFailedError) as err:
        print(f"tts: {err}", file=sys.stderr)
        raise SystemExit(1) from err
