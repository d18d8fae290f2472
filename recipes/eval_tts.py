"""Test-time-scaling evaluation: benchmarks x policies x strategies x N from one generation per question.

    python recipes/eval_tts.py --config recipes/configs/eval_tts_testbed.yaml
    python recipes/eval_tts.py --config recipes/configs/eval_tts_paper.yaml --output_dir outputs/eval_paper

Rerunning into the same `output_dir` resumes (finished questions are not sampled again); see docs/evaluation.md.
"""

from trl_vlprm.eval.eval_tts import main

if __name__ == "__main__":
    main()
