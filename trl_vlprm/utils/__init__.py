"""Small shared helpers below every pipeline stage (resume pins, digests, atomic writes, locks)."""
