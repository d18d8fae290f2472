"""Small shared helpers below every pipeline stage (resume pins, digests, atomic writes, locks, lazy exports)."""

from trl_vlprm.utils.lazy import lazy_getattr
from trl_vlprm.utils.resume import (
    OutputLockedError,
    SettingsMismatchError,
    atomic_write,
    atomic_write_text,
    check_settings,
    output_lock,
    question_digest,
)

__all__ = [
    "OutputLockedError",
    "SettingsMismatchError",
    "atomic_write",
    "atomic_write_text",
    "check_settings",
    "lazy_getattr",
    "output_lock",
    "question_digest",
]
