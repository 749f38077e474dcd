"""Command-line entry points (`vitlab-train`, `vitlab-eval`); the only code that reads argv or the environment."""
