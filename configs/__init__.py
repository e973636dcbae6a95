"""Experiment configs: each file defines `get_config()` returning a ConfigDict."""
