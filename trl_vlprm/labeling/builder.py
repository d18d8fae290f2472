"""Build a stepwise-supervision dataset (Parquet shards with an Image feature) from question records.

Questions are cut into fixed chunks of `shard_size`; chunk i becomes `shard-{i:05d}.parquet` plus a stats sidecar
`shard-{i:05d}.json`, each written to a temporary file then moved into place with `os.replace`. A shard is done when
its Parquet file exists, so a rerun after any interruption (even SIGKILL) labels exactly the missing chunks: no record
is lost or written twice. `labelling_config.json` pins the settings; a rerun with other settings is refused.

Entry points: `build_dataset(questions, policy, config)` and `main(argv)` (`trl-vlprm label ...`,
`recipes/build_dataset.py`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trl_vlprm.data.schema import RecordError, stepwise_features
from trl_vlprm.labeling.combine import NEEDS_JUDGE, NEEDS_MC, RULES, UNKNOWN_POLICIES
from trl_vlprm.labeling.judge import JudgeClient, JudgeConfig
from trl_vlprm.labeling.judge_server import JudgeServer
from trl_vlprm.labeling.labeler import BatchStats, label_batch
from trl_vlprm.labeling.mc import MC_MODES, Grader, MCConfig

CONFIG_FILE = "labelling_config.json"


@dataclass
class LabelConfig:
    """Arguments of `trl-vlprm label` / `recipes/build_dataset.py`.

    Args:
        dataset: "puzzles" (generated testbed puzzles) or a `datasets` folder / .jsonl / .json / .parquet file of
            question records (`id`, `prompt`, `images`, `answer`, optional `options`, `category`).
        dataset_split: split to read from a `DatasetDict` folder.
        num_questions: label only the first questions (all when None; how many to generate for "puzzles").
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
            judge_max_concurrency: see `trl_vlprm.labeling.judge.JudgeConfig`.
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
        """Settings a resumed run must share (everything that changes what a record holds)."""
        settings = asdict(self)
        for name in ("output_dir", "show_progress", "num_questions", "judge_max_concurrency", "judge_timeout"):
            settings.pop(name)
        return settings


def output_features():
    """Stepwise-supervision features plus the labelling provenance columns."""
    from datasets import List, Value

    features = stepwise_features(with_types=True, soft_labels=False)
    features["question_id"] = Value("string")
    features["label_weights"] = List(Value("float32"))
    for name in ("rule", "rule_case", "rollout_answer", "mc", "judge", "gold_step_correct", "costs"):
        features[name] = Value("string")
    features["num_steps"] = Value("int32")
    features["rollout_correct"] = Value("bool")
    return features


def _atomic_write(path: Path, write) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp)
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def write_shard(output_dir: Path, index: int, rows: list[dict[str, Any]], stats: BatchStats) -> Path:
    """Write one shard's stats sidecar, then its Parquet file (its presence marks the shard done)."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    features = output_features()
    columns = {name: [row[name] for row in rows] for name in features}
    dataset = Dataset.from_dict(columns, features=features)
    base = output_dir / f"shard-{index:05d}"
    _atomic_write(base.with_suffix(".json"), lambda t: Path(t).write_text(json.dumps(stats.as_dict(), indent=1)))
    # pyarrow directly: the table carries the features in its schema metadata, and no progress bar per shard
    _atomic_write(base.with_suffix(".parquet"), lambda t: pq.write_table(dataset.data.table, t))
    return base.with_suffix(".parquet")


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


def _pin_config(output_dir: Path, config: LabelConfig) -> None:
    path = output_dir / CONFIG_FILE
    settings = config.pinned()
    if path.exists():
        previous = json.loads(path.read_text())
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            raise ValueError(f"{path}: this run changes {changed} (old, new); use another output_dir")
        return
    _atomic_write(path, lambda t: Path(t).write_text(json.dumps(settings, indent=1)))


def build_dataset(
    questions, policy, config: LabelConfig, judge_server: JudgeServer | None = None, grader: Grader | None = None
) -> BatchStats:
    """Label every question chunk not yet written to `config.output_dir`; return the stats of all shards there.

    `judge_server` replaces the "testbed" judge by a started `JudgeServer` of the caller's (e.g. one that fails);
    `grader` the default answer grader `trl_vlprm.data.answers.grade`.
    """
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _pin_config(output_dir, config)
    _check_ids(questions)
    for stale in output_dir.glob(".shard-*.tmp"):  # left by a run killed mid-write; never a finished shard
        stale.unlink()
    num_shards = (len(questions) + config.shard_size - 1) // config.shard_size

    def chunk(i: int) -> range:
        return range(i * config.shard_size, min(len(questions), (i + 1) * config.shard_size))

    todo = [i for i in range(num_shards) if not (output_dir / f"shard-{i:05d}.parquet").exists()]
    total = BatchStats()
    for i in sorted(set(range(num_shards)) - set(todo)):
        total.add(BatchStats.from_dict(json.loads((output_dir / f"shard-{i:05d}.json").read_text())))

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
        total=len(questions),
        initial=len(questions) - sum(len(chunk(i)) for i in todo),
        desc=f"label {config.rule}",
        unit="q",
        disable=not config.show_progress,
    )
    try:
        for i in todo:
            batch = [questions[j] for j in chunk(i)]
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
            write_shard(output_dir, i, rows, stats)
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


def load_labelled(output_dir: str | Path):
    """The labelled dataset of all shards in `output_dir`, in shard order."""
    from datasets import load_dataset

    files = sorted(str(p) for p in Path(output_dir).glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no shard-*.parquet in {output_dir}")
    return load_dataset("parquet", data_files=files, split="train", features=output_features())


def _make_policy_and_questions(config: LabelConfig):
    if config.dataset == "puzzles":
        from trl_vlprm.data.puzzles import generate_puzzles

        questions = generate_puzzles(config.num_questions or 64, seed=config.seed)
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
    run(config)
