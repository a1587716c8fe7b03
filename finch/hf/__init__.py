"""HuggingFace's names: `names` (TrainingArguments fields finch accepts or refuses, HF's properties, a
`transformers.TrainingArguments` converted) and `metrics` (`load_metric`, `evaluate.load`'s metrics offline).
"""
