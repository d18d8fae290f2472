"""`UsageError`: a setting or an input the user can fix. `trl-vlprm` prints it as one line (no traceback)."""

from __future__ import annotations


class UsageError(ValueError):
    """A setting or input that cannot work, with a message naming it (file, row, field) and the fix."""
