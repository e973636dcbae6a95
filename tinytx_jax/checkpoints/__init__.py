"""Orbax checkpoints: the store, the meta saved beside each state, file digests."""
