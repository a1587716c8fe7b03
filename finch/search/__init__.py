"""Hyperparameter search on Optuna: `study` (`Trainer.hyperparameter_search`, trials, pruning), `storage`
(the study's database), `ranks` (rank 0's decisions shared under torchrun). Trains through the `Trainer` it is
given, so it never imports the training loop.
"""
