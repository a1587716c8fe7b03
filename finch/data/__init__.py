"""Data before it reaches the model: `readers` (files of every format, read whole or streamed), `columns` (text and
label columns inferred and checked, splits, label encoding, the demo data), `tasks` (the task the labels imply, its
metrics), `metrics`, `tokenize` (cached tokenization), `models` (a model folder or hub name checked before loading),
`batching` (the batch plan: a pure function of seed and epoch, each rank's share, the DataLoader). Imports only
`finch.errors`.
"""
