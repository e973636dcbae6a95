"""Inference: a trained model loaded for use (parameters only), sampling, chat, eval, decoding."""
