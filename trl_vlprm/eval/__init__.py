"""Evaluation: the paper's benchmarks, process-error benchmarks, the test-time-scaling sweep and its report.

Exports load lazily: `trl-vlprm view` and `trl-vlprm tts` read benchmark specs (`trl_vlprm.eval.specs`) without
importing the sweep, which imports the labelling stage and its judge client.
"""

from trl_vlprm.utils.lazy import lazy_getattr

_EXPORTS = {
    "BENCHMARKS": ".benchmarks",
    "load_benchmark": ".benchmarks",
    "EvalTTSConfig": ".eval_tts",
    "run": ".eval_tts",
    "PROCESS_BENCHES": ".process_bench",
    "load_process_bench_spec": ".process_bench",
    "load_visual_process_bench": ".process_bench",
    "process_bench_metrics": ".process_bench",
    "score_process_bench": ".process_bench",
    "plot_accuracy_vs_n": ".report",
    "write_tables": ".report",
    "derive_accuracies": ".selection",
    "run_sweep": ".tts_sweep",
    "sample_benchmark": ".tts_sweep",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
