"""`vitlab-report`: one self-contained HTML page per run (config, curves, costs, probes, per-class results,
calibration, attention maps and ODE pictures, images inline), optionally beside a second run."""
