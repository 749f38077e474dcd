"""Figures of a run (PNG files under `<run dir>/figures/`, and W&B images when the run logs there).

Every drawing function takes numbers, not models, and returns the path it wrote; `figures.pyplot()` is the one
place matplotlib is imported (the `[plots]` extra), so a missing extra is one paragraph naming the pip command.
"""
