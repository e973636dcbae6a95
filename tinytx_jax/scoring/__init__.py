"""Measuring a model: the loss and accuracy training and eval report, exact replies."""
