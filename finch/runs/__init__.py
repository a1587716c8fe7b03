"""What a run leaves on disk and how it is read back: `checkpoint` (the atomic checkpoint format), `folders`
(which checkpoints are whole and whose, rotation), `resume` (which checkpoint a run resumes, every check before
weights load), `fingerprint` (data and architecture digests), `files` (safe writes, output folder checks, the run
lock), `card` (`finch.json` beside a model). Never imports the training loop or the CLI.
"""
