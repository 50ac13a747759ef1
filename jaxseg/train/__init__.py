"""Training: the train state, losses, optimizers and schedules, the jitted step, the loop, benchmarks."""
