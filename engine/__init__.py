"""Everything that is not HTTP: tasks, models, checkpoints, search, runtime, training, evaluation."""
