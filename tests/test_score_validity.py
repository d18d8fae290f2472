"""Scores that cannot be trusted are never used (issue 19, items 3, 5, 6, 9, 11).

A value-PRM folder whose weights hold no head, a PRM folder that ships its own code, NaN step scores, a lone surrogate
in a GRPO completion, and a `CPURecipe` folder trained before its settings were pinned: each is an error naming the
folder (or a counted, documented fallback for the GRPO reward), never a random head, a NaN pick or a reused guess.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import textwrap

import pytest
import torch
from test_rewards import save_tiny_prm

from trl_vlprm.cpu_recipe import CPURecipe
from trl_vlprm.eval.process_bench import load_process_bench_spec, score_process_bench
from trl_vlprm.guidance.rewards import VLPRMReward
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.guidance.strategies import SearchConfig, get_strategy
from trl_vlprm.modeling.heads import HeadNotLoadedError, load_prm
from trl_vlprm.modeling.hub import RemoteCodeError
from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles
from trl_vlprm.utils.resume import SettingsMismatchError


@pytest.fixture(scope="module")
def prm_path(tmp_path_factory):
    return save_tiny_prm(tmp_path_factory.mktemp("validity_prm"))


@pytest.fixture(scope="module")
def question():
    return generate_puzzles(1, seed=0)[0]


def test_a_value_prm_folder_without_head_weights_is_refused_not_given_a_random_head(prm_path, tmp_path):
    # The folder records `prm_head: value`, but its weights are the base model's: no `score.*` tensor.
    headless = tmp_path / "headless"
    shutil.copytree(prm_path, headless)
    shutil.copy(prm_path.parent / "base" / "model.safetensors", headless / "model.safetensors")
    assert json.loads((headless / "config.json").read_text())["prm_head"] == "value"
    with pytest.raises(HeadNotLoadedError, match=r"value head weights.*score\.weight.*not found in .*headless"):
        load_prm(headless)
    # A base model given head="value" still gets its new head: that is how a PRM is started.
    assert load_prm(prm_path.parent / "base", head="value").score is not None


class NaNScorer:
    """A scorer whose PRM breaks on the first candidate (NaN steps) and rates the others 0.9."""

    step_separator = "\n"

    def score(self, question, candidates):
        return [[math.nan] * len(c.steps) if i == 0 else [0.9] * len(c.steps) for i, c in enumerate(candidates)]


def test_nan_step_scores_are_an_error_in_search_never_a_pick(prm_path, question):
    with pytest.raises(ValueError, match=r"candidate 0: .*non-finite step score nan"):
        get_strategy("best_of_n")(question, ScriptedPolicy(seed=0), NaNScorer(), SearchConfig(n=4))
    # A real PRM broken the way fp16 overflow breaks one: NaN head weights.
    broken = PRMScorer.from_pretrained(prm_path)
    with torch.no_grad():
        broken.model.score.weight.fill_(math.nan)
    with pytest.raises(ValueError, match=r"candidate 0: PRMScorer returned a non-finite step score nan"):
        get_strategy("best_of_n")(question, ScriptedPolicy(seed=0), broken, SearchConfig(n=4))


def test_nan_step_scores_are_an_error_on_a_process_bench_not_a_wrong_verdict():
    bench = load_process_bench_spec("testbed:num_questions=2,solutions_per_question=2", seed=0)
    with pytest.raises(
        ValueError, match=r"record .*#0: the scorer returned a non-finite step score \(nan at step 0\)"
    ):
        score_process_bench(NaNScorer(), bench)


def test_nan_step_scores_are_a_counted_fallback_reward(question):
    reward = VLPRMReward(NaNScorer(), aggregation="min", invalid_score_reward=-1.0)
    logged = {}
    rewards = reward(
        prompts=["q"] * 3,
        completions=["a\nb", "c\nd", "e"],
        images=[[]] * 3,
        log_metric=lambda key, value: logged.__setitem__(key, value),
    )
    assert rewards == [-1.0, 0.9, 0.9]  # candidate 0 of the one group scored NaN
    assert logged["vlprm_min/invalid_score"] == 1.0 and reward.stats.invalid_score == 1
    assert all(math.isfinite(r) for r in rewards)


def test_a_lone_surrogate_in_a_completion_is_a_counted_fallback_not_an_exception(prm_path, question):
    reward = VLPRMReward(PRMScorer.from_pretrained(prm_path), invalid_input_reward=None)
    logged = {}
    rewards = reward(
        prompts=[question["prompt"]] * 2,
        completions=["The grid holds 4 ; Answer: 4", "The grid \udc80 holds 4 ; Answer: 4"],
        images=[question["images"]] * 2,
        log_metric=lambda key, value: logged.__setitem__(key, value),
    )
    assert rewards[1] is None and 0.0 < rewards[0] < 1.0
    assert logged["vlprm_min/invalid_input"] == 1.0 and reward.stats.scored == 1


REMOTE_CODE = textwrap.dedent(
    """
    import pathlib
    from transformers import PretrainedConfig

    pathlib.Path({marker!r}).write_text("the folder's own Python ran")


    class CustomConfig(PretrainedConfig):
        model_type = "custom_vlprm"
    """
)


def test_a_prm_folder_with_its_own_code_is_refused_when_the_user_would_answer_yes(prm_path, tmp_path, monkeypatch):
    folder = tmp_path / "remote"
    shutil.copytree(prm_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom_vlprm", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text(REMOTE_CODE.format(marker=str(tmp_path / "CODE_RAN")))
    # transformers asks "[y/N]" on stdin for a folder with custom code; a user answering "y" runs it.
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    with pytest.raises(RemoteCodeError, match=r"ships its own code \(config.json auto_map .*configuration_custom"):
        PRMScorer.from_pretrained(folder)
    assert not (tmp_path / "CODE_RAN").exists(), "the folder's Python ran"


def test_cpu_recipe_refuses_a_finished_prm_from_before_the_settings_pin(prm_path, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(prm_path, output / "vlprm")  # a finished PRM, no cpu_recipe.json beside it
    with pytest.raises(SettingsMismatchError, match=r"vlprm.*no cpu_recipe\.json.*cannot tell"):
        CPURecipe(max_steps=50, seed=7).train(output)
    assert not (output / "cpu_recipe.json").exists()  # nothing pinned onto a model of unknown settings
