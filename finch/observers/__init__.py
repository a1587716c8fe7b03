"""What watches a run from outside and never stops it: `trackers` (MLflow, W&B, TensorBoard through their
own libraries) and `hub` (uploads to the HuggingFace Hub). They are callbacks (`finch.events.TrainerCallback`) and
never import the training loop.
"""
