"""Pure decision logic: no I/O, no framework imports (checked by import-linter)."""
