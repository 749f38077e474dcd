"""Training: the Lightning module (loss, metrics, optimiser hookup) and training callbacks."""
