"""Evaluation: the paper's benchmarks, process-error benchmarks, the test-time-scaling sweep and its report."""

from trl_vlprm.eval.benchmarks import BENCHMARKS, load_benchmark
from trl_vlprm.eval.eval_tts import EvalTTSConfig, run
from trl_vlprm.eval.process_bench import (
    PROCESS_BENCHES,
    load_process_bench_spec,
    load_visual_process_bench,
    process_bench_metrics,
    score_process_bench,
)
from trl_vlprm.eval.report import plot_accuracy_vs_n, write_tables
from trl_vlprm.eval.selection import derive_accuracies
from trl_vlprm.eval.tts_sweep import run_sweep, sample_benchmark

__all__ = [
    "BENCHMARKS",
    "PROCESS_BENCHES",
    "EvalTTSConfig",
    "derive_accuracies",
    "load_benchmark",
    "load_process_bench_spec",
    "load_visual_process_bench",
    "plot_accuracy_vs_n",
    "process_bench_metrics",
    "run",
    "run_sweep",
    "sample_benchmark",
    "score_process_bench",
    "write_tables",
]
