"""Data: the record schema and its validation, dataset loading and writing, converters from other layouts, answer
extraction and grading, and the PuzzleVQA / AlgoPuzzleVQA loaders (docs/data_format.md). Exports load lazily."""

from trl_vlprm.utils.lazy import lazy_getattr

_EXPORTS = {
    "IMAGE_PLACEHOLDER": ".schema",
    "PERCEPTION": ".schema",
    "REASONING": ".schema",
    "RecordError": ".schema",
    "format_prompt": ".schema",
    "load_image": ".schema",
    "stepwise_features": ".schema",
    "validate_dataset": ".schema",
    "validate_record": ".schema",
    "load_records": ".loading",
    "write_dataset": ".loading",
    "convert_dataset": ".converters",
    "convert_records": ".converters",
    "extract_answer": ".answers",
    "grade": ".answers",
    "load_puzzlevqa": ".puzzlevqa",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
