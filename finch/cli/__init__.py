"""The `finch` command; `main` is the console script's entry point. `commands` (the subcommands, flags from every
TrainingArguments field, the error boundary and exit codes), `job` (`finch train`'s job: options resolved, every
check that needs no weights, the Trainer built), `config` (YAML and key=value options), `predict` (`finch eval` /
`finch predict`), `verify` (`finch verify-resume`), `search` (`finch search`). The top layer: it may import every
wing; none imports it.
"""

from finch.cli.commands import main

__all__ = ["main"]
