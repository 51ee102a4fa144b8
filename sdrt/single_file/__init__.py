"""Single-file checkpoints as model sites distribute them, read offline into the diffusers layout they describe."""
