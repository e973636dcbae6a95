"""The Flax linen transformer and the arithmetic of its attention."""
