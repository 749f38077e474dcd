"""Run directories and their files (`run.json`, `results.json`), shared by `vitlab-train` and `vitlab-reproduce`.

A neutral layer: it imports nothing of `vitlab.cli`, `vitlab.reproduce` or `vitlab.bench`, and no torch, so the
command-line tools and the table runner can both read and write runs without importing each other.
"""
