"""Command-line entry points (`vitlab-train`, `-eval`, `-bench`, `-reproduce`); the only code that reads argv."""
