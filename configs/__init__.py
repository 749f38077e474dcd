"""vitlab's Hydra configs, shipped as the package `vitlab.configs` (Hydra search path `pkg://vitlab.configs`)."""
