"""Packed data sets: webdataset tar shards + a per-split byte-offset index + `manifest.json` (docs/data.md)."""
