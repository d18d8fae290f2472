"""`CPURecipe`: a VL-PRM that learns on a CPU in minutes; the tiny model, the data and the training settings.

It trains a ~0.3 M-parameter Qwen2-VL value-head PRM with `VLPRMTrainer` on the learnable tier of the testbed, with
the scripted policy's gold step labels. `make demo` and `tests/test_prm_learns.py` use it, so the figures in
docs/testbed.md are the ones `make test` holds. That page ("A PRM that learns on a CPU") gives the measurements
behind each default: the wide text MLP and large initial scale, no step separator, the balanced perception errors,
the perception loss weight and the step count.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

LEARNABLE_TIER = "learnable"
LOOKALIKE_TIER = "lookalike"


@dataclass
class CPURecipe:
    """Settings of a tiny VL-PRM trained on the learnable testbed tier.

    Args:
        seed: seeds the model weights, the training puzzles and solutions, and the trainer.
        hidden_size: text width of the tiny Qwen2-VL.
        num_layers: text transformer layers.
        num_heads: text attention heads.
        vision_width: width of the vision blocks.
        intermediate_size: width of the text MLP.
        initializer_range: standard deviation of the random initial weights.
        vocab_size: tokenizer vocabulary, trained on the testbed text.
        families: puzzle families or a tier name of `trl_vlprm.testbed.TIERS`.
        num_puzzles: training puzzles.
        solutions_per_puzzle: scripted-policy solutions sampled per training puzzle.
        perception_error_rate: misreading rate of the policy that writes the training solutions.
        reasoning_error_rate: slip rate of the policy that writes the training solutions.
        image_size: image side in pixels (84 gives 9 image tokens).
        max_steps: optimizer steps.
        learning_rate: peak learning rate (AdamW).
        warmup_ratio: share of the steps spent warming the learning rate up linearly.
        batch_size: rows per step.
        perception_loss_weight: loss multiplier of perception steps.
        vision_warmup_steps: steps of vision-tower warm-up on rendered images before PRM training (0: none).
        word_labels: None (a label at each step's end), or a `testbed.label_every_word` convention for the
            perception steps, whose verdicts the scorers then pool word by word.
        num_threads: torch CPU threads while training and evaluating.
    """

    seed: int = field(default=0, metadata={"help": "Seed of the weights, the training data and the trainer."})
    hidden_size: int = field(default=64, metadata={"help": "Text width of the tiny Qwen2-VL."})
    num_layers: int = field(default=2, metadata={"help": "Text transformer layers."})
    num_heads: int = field(default=4, metadata={"help": "Text attention heads."})
    vision_width: int = field(default=32, metadata={"help": "Width of the vision blocks."})
    intermediate_size: int = field(default=1024, metadata={"help": "Width of the text MLP."})
    initializer_range: float = field(default=0.1, metadata={"help": "Standard deviation of the initial weights."})
    vocab_size: int = field(default=640, metadata={"help": "Tokenizer vocabulary, trained on the testbed text."})
    families: str = field(default=LEARNABLE_TIER, metadata={"help": "Puzzle families or a tier name."})
    num_puzzles: int = field(default=1200, metadata={"help": "Training puzzles."})
    solutions_per_puzzle: int = field(default=4, metadata={"help": "Scripted solutions sampled per training puzzle."})
    perception_error_rate: float = field(default=0.5, metadata={"help": "Misreading rate of the training policy."})
    reasoning_error_rate: float = field(default=0.3, metadata={"help": "Slip rate of the training policy."})
    image_size: int = field(default=84, metadata={"help": "Image side in pixels (84 gives 9 image tokens)."})
    max_steps: int = field(default=2400, metadata={"help": "Optimizer steps."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate of AdamW."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of steps of linear learning-rate warm-up."})
    batch_size: int = field(default=8, metadata={"help": "Rows per optimizer step."})
    perception_loss_weight: float = field(default=4.0, metadata={"help": "Loss multiplier of perception steps."})
    vision_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Steps of `trl_vlprm.testing.warm_up_vision_tower` before PRM training: the random vision tower "
            "learns, from the recipe's own rendered puzzles, which colours each image holds, and is then frozen while "
            "the PRM trains. 0 trains the PRM on the random tower as built (docs/testbed.md, 'Third round')."
        },
    )
    word_labels: str | None = field(
        default=None,
        metadata={
            "help": "None labels each step at its end. 'each_word' or 'first_error' cuts every training solution's "
            "perception step after each word (`trl_vlprm.testbed.label_every_word`, no step separator: the tokens "
            "are the step's own) with a label on every word, each word judged alone or 'correct so far'; the PRM then "
            "records `word_verdicts='perception'`, so every scorer scores a perception step by its lowest word "
            "verdict. With 'each_word' and a warmed-up tower (`CPURecipe.lookalike()`), the lookalike tier's PRM "
            "reads PuzzleVQA's real images (docs/testbed.md, 'Fifth round').",
            "choices": [None, "each_word", "first_error"],
        },
    )
    num_threads: int = field(
        default=1,
        metadata={
            "help": "Torch CPU threads while training and evaluating: with 1 the figures are the same whatever the "
            "machine's core count (reductions run in one order), and a busy machine does not stall on spinning "
            "OpenMP threads."
        },
    )

    def with_seed(self, seed: int) -> CPURecipe:
        return replace(self, seed=seed)

    @classmethod
    def lookalike(cls, **overrides: Any) -> CPURecipe:
        """The recipe on the lookalike tier (PuzzleVQA's vocabulary, docs/testbed.md), whose PRM is evaluated on the
        real PuzzleVQA process bench: images rendered at 224 px (the processor resizes them, as it resizes
        PuzzleVQA's 512 px images, to 112 px: 16 image tokens), the vision tower warmed up 800 steps to see colours
        (`vision_warmup_steps`), a verdict at every word of the captions (`word_labels="each_word"`), everything
        else the learnable recipe's. Its PRM reads PuzzleVQA's images (docs/testbed.md, fifth round)."""
        settings = {
            "families": LOOKALIKE_TIER,
            "image_size": 224,
            "vision_warmup_steps": 800,
            "word_labels": "each_word",
        }
        return cls(**{**settings, **overrides})

    def build_model(self, path: str | Path) -> Path:
        """The tiny random Qwen2-VL (tokenizer trained on the testbed text), written to `path` unless present."""
        from trl_vlprm.testbed import testbed_corpus
        from trl_vlprm.testing import build_tiny_vlm

        path = Path(path)
        if not (path / "model.safetensors").exists():
            build_tiny_vlm(
                path,
                arch="qwen2_vl",
                seed=self.seed,
                hidden_size=self.hidden_size,
                num_layers=self.num_layers,
                num_heads=self.num_heads,
                vision_width=self.vision_width,
                vocab_size=self.vocab_size,
                extra_corpus=testbed_corpus(families=self.families),
                initializer_range=self.initializer_range,
                intermediate_size=self.intermediate_size,
            )
        return path

    def prepare_model(self, output_dir: str | Path) -> tuple[Path, Any]:
        """The model PRM training starts from, under `output_dir`: the tiny random Qwen2-VL (`build_model`), its
        vision tower warmed up when `vision_warmup_steps` is set. Returns its folder and the warm-up's outcome
        (None without one); a finished warm-up is reused."""
        from trl_vlprm.testbed import generate_puzzles, image_tags
        from trl_vlprm.testing import warm_up_vision_tower

        output_dir = Path(output_dir)
        model_path = self.build_model(output_dir / "tiny-qwen2-vl")
        if not self.vision_warmup_steps:
            return model_path, None
        # Offset so the warm-up's images are neither training nor held-out puzzles.
        puzzles = generate_puzzles(
            n=self.num_puzzles, seed=2000 + self.seed, families=self.families, image_size=self.image_size
        )
        warmup = warm_up_vision_tower(
            model_path,
            output_dir / "tiny-qwen2-vl-warm",
            [row["images"][0] for row in puzzles],
            [image_tags(row) for row in puzzles],
            steps=self.vision_warmup_steps,
            seed=self.seed,
        )
        return warmup.path, warmup

    def supervision(self, num_puzzles: int, seed: int, **policy: Any):
        """Scripted solutions of `num_puzzles` puzzles of the recipe's families, labelled by their gold."""
        from trl_vlprm.testbed import sample_supervision

        rates = {
            "perception_error_rate": self.perception_error_rate,
            "reasoning_error_rate": self.reasoning_error_rate,
        }
        rates.update(policy)
        return sample_supervision(
            num_puzzles,
            self.solutions_per_puzzle,
            rates["perception_error_rate"],
            rates["reasoning_error_rate"],
            seed=seed,
            families=self.families,
            image_size=self.image_size,
        )

    def training_data(self):
        # Offset so the training puzzles never coincide with held-out ones drawn with small seeds.
        data = self.supervision(self.num_puzzles, seed=1000 + self.seed)
        if self.word_labels:
            from trl_vlprm.testbed import label_every_word

            data = label_every_word(data, convention=self.word_labels)
        return data

    def training_args(self, output_dir: str | Path, **overrides: Any):
        from trl_vlprm import VLPRMConfig
        from trl_vlprm.data.schema import PERCEPTION

        settings = {
            "output_dir": str(output_dir),
            "head": "value",
            "perception_loss_weight": self.perception_loss_weight,
            "max_length": 256,
            "per_device_train_batch_size": self.batch_size,
            "per_device_eval_batch_size": 64,
            "max_steps": self.max_steps,
            "learning_rate": self.learning_rate,
            "lr_scheduler_type": "cosine",
            # transformers 5 reads a `warmup_steps` below 1 as a share of the steps (it absorbed `warmup_ratio`).
            "warmup_steps": self.warmup_ratio,
            "save_strategy": "no",
            "logging_steps": max(1, self.max_steps // 10),
            "use_cpu": True,
            "seed": self.seed,
            "disable_tqdm": False,
            # No separator: each verdict is read at its step's last word, the checked detail (see learnable.py).
            "step_separator": "",
            # Saved with the PRM: every scorer cuts a perception step as the training data did and pools its words.
            "word_verdicts": PERCEPTION if self.word_labels else None,
            # VLPRMConfig turns it on by default, as TRL does; a tiny model only loses time to it.
            "activation_checkpointing": False,
            # A warmed-up tower is kept as warmed: the PRM's labels are a weaker signal for it than the warm-up's (the
            # image-reading figures of docs/testbed.md, third round, were measured frozen).
            "freeze_vision_tower": self.vision_warmup_steps > 0,
        }
        return VLPRMConfig(**{**settings, **overrides})

    def train(self, output_dir: str | Path, eval_dataset=None, train_dataset=None, **overrides: Any) -> TrainedPRM:
        """Build the model, sample the data (or take `train_dataset`, e.g. hybrid labels), train, save to
        `<output_dir>/vlprm`; reuse a finished run.

        Returns the PRM folder, held-out metrics before and after training (when `eval_dataset` is given) and the
        training wall time (0 when reused).
        """
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            return self._train(Path(output_dir), eval_dataset, overrides, train_dataset)
        finally:
            torch.set_num_threads(threads)

    def train_in_background(
        self, output_dir: str | Path, log_path: str | Path, **overrides: Any
    ) -> BackgroundTraining:
        """Start `train(output_dir, **overrides)` in a child process writing its output to `log_path`; the caller
        goes on (the demo labels and trains a second PRM meanwhile: each run uses one thread, so two fill 2 cores).
        `wait()` on the handle, then `train(output_dir, eval_dataset=...)` reuses the finished PRM."""
        import multiprocessing

        self._pin(Path(output_dir), overrides)  # a settings clash is refused now, not minutes later at wait()
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch or tokenizer threads
        queue = context.Queue()
        process = context.Process(
            target=_train_in_child, args=(self, Path(output_dir), Path(log_path), overrides, queue), daemon=True
        )
        process.start()
        return BackgroundTraining(process, queue, Path(log_path))

    def _pin(self, output_dir: Path, overrides: dict[str, Any], train_dataset=None) -> None:
        """Pin the run's settings to `output_dir`; a folder trained with other settings is refused, naming them."""
        from trl_vlprm.utils.resume import SettingsMismatchError, dataclass_settings, pin_settings

        pin = output_dir / "cpu_recipe.json"
        if not pin.exists() and (output_dir / "vlprm" / "model.safetensors").exists():
            # Trained before settings were pinned: pinning these settings onto it would vouch for a guess.
            raise SettingsMismatchError(
                f"{output_dir / 'vlprm'} holds a finished PRM but {output_dir} has no cpu_recipe.json (trained before "
                "settings were pinned): cannot tell which settings trained it. Delete the folder to train anew, or "
                "train into another output_dir"
            )
        # A finished run is reused only if it was trained with these very settings (else refused, naming them).
        given = {"train_dataset": train_dataset._fingerprint} if train_dataset is not None else {}
        pin_settings(pin, {**dataclass_settings(self), "overrides": overrides, **given})

    def _train(self, output_dir: Path, eval_dataset, overrides: dict[str, Any], train_dataset=None) -> TrainedPRM:
        from trl_vlprm import VLPRMTrainer

        prm_path = output_dir / "vlprm"
        self._pin(output_dir, overrides, train_dataset)
        model_path, warmup = self.prepare_model(output_dir)
        args = self.training_args(prm_path, **overrides)
        done = (prm_path / "model.safetensors").exists()
        trainer = VLPRMTrainer(
            str(prm_path if done else model_path),
            args,
            train_dataset=self.training_data() if train_dataset is None else train_dataset,
            eval_dataset=eval_dataset,
        )
        before = {}
        if eval_dataset is not None and not done:
            before = self._evaluate(trainer, eval_dataset, args.layout)
        seconds = 0.0
        if not done:
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            # save_model writes in place: save beside, then rename, so a crash mid-save never leaves a model to reuse
            partial = prm_path.with_name(prm_path.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            trainer.save_model(str(partial))
            if (prm_path / "runs").is_dir():  # the trackers' logs (report_to="tensorboard") stay with the model
                shutil.move(str(prm_path / "runs"), str(partial / "runs"))
            shutil.rmtree(prm_path, ignore_errors=True)  # only the trainer's logs: no model was finished here
            partial.rename(prm_path)
        after = self._evaluate(trainer, eval_dataset, args.layout) if eval_dataset is not None else {}
        return TrainedPRM(prm_path, before, after, seconds, warmup)

    def _evaluate(self, trainer, eval_dataset, layout) -> dict[str, float]:
        """Held-out step metrics. The trainer reads every step at its end; a PRM trained with word labels is read
        as every scorer reads it (a perception step by its lowest word verdict), under the trainer's metric names."""
        if not self.word_labels:
            return trainer.evaluate()
        from trl_vlprm.eval.guardrails import scored_step_metrics
        from trl_vlprm.guidance.scorer import PRMScorer

        scorer = PRMScorer(trainer.model, trainer.processing_class, layout=layout)
        return scored_step_metrics(scorer, eval_dataset)


@dataclass
class TrainedPRM:
    """Outcome of `CPURecipe.train`."""

    path: Path
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    train_seconds: float
    vision_warmup: Any = None  # the `VisionWarmup` of the tower it started from, when the recipe warms one up


@dataclass
class BackgroundTraining:
    """Handle of `CPURecipe.train_in_background`."""

    process: Any
    queue: Any
    log_path: Path

    def wait(self, poll_seconds: float = 5.0) -> float:
        """Block until the child has finished; return its training wall time (0 when it reused a finished run).

        Raises:
            RuntimeError: the child failed or died; the message holds its traceback and names its log.
        """
        import queue as queue_module

        while True:
            try:
                status, payload = self.queue.get(timeout=poll_seconds)
                break
            except queue_module.Empty:
                if not self.process.is_alive():
                    try:  # it may have reported just before exiting, after the wait above timed out
                        status, payload = self.queue.get(timeout=1.0)
                    except queue_module.Empty:
                        status, payload = "error", f"the training process exited with code {self.process.exitcode}"
                    break
        self.process.join()
        if status != "ok":
            raise RuntimeError(f"background PRM training failed (log: {self.log_path}):\n{payload}")
        return float(payload)


def _train_in_child(recipe: CPURecipe, output_dir: Path, log_path: Path, overrides: dict[str, Any], queue) -> None:
    import os
    import traceback

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)  # tqdm and warnings (Python and native) go to the log, not the parent's terminal
        os.dup2(log.fileno(), 2)
        try:
            queue.put(("ok", recipe.train(output_dir, **overrides).train_seconds))
        except BaseException:  # every failure goes back to the parent, which raises it with this traceback
            queue.put(("error", traceback.format_exc()))


def main(argv: list[str] | None = None) -> None:
    """`python -m trl_vlprm.cpu_recipe OUT [--seed 0]`: write the recipe's tiny Qwen2-VL (testbed tokenizer, wide
    MLP) to OUT, the base model `recipes/configs/vlprm_tiny_cpu.yaml` trains (docs/training.md)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("output_dir", help="Folder to write the model to (left as it is when it holds one).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random initial weights.")
    args = parser.parse_args(argv)
    sys.stdout.write(f"{CPURecipe(seed=args.seed).build_model(args.output_dir)}\n")  # the folder, for scripts


if __name__ == "__main__":
    main()
