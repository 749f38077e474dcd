"""Looking inside a model: evaluation metrics beyond top-1, feature probes, implied attention matrices.

Pure computation on tensors (no files, no figures): `vitlab.plots` draws what this package computes and
`vitlab.training` / `vitlab.cli` decide when to run it.
"""
