"""Figures of a run (PNG files under `<run dir>/figures/`, and W&B images when the run logs there).

Every drawing function takes numbers, not models, and returns the path it wrote; this package imports
matplotlib only through `figures.pyplot()` (the `[plots]` extra), so a missing extra is one paragraph naming the
pip command. (The benchmark and table plots of `vitlab-bench` / `vitlab-reproduce` predate it and import their own.)
"""
