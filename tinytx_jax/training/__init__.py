"""Training: the task a config assembles, the state, optimiser, jitted steps and the loop."""
