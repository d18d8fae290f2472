"""Build a step-labelled VL-PRM dataset: rollouts, Monte-Carlo labels, a VLM judge, a combination rule.

    python recipes/build_dataset.py --config recipes/configs/label_testbed.yaml
    python recipes/build_dataset.py --config recipes/configs/label_testbed.yaml --rule consensus --output_dir out/c

Same as `trl-vlprm label ...`. Rerunning into the same `output_dir` resumes; see docs/labelling.md.
"""

from trl_vlprm.labeling.builder import main

if __name__ == "__main__":
    main()
