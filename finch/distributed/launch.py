"""`finch train --nproc-per-node N`: torchrun's elastic agent run inside the CLI, so the command keeps finch's exit
codes (0 done, 2 a mistake, 75 preempted after a save, 1 a failure) and its one-message errors.

The launcher process becomes the agent (not a child of it): a scheduler's SIGTERM reaches it, and torchrun passes
it to every rank. Each rank's CLI leaves how it ended (`Outcome`) in a folder the launcher names in
`FINCH_LAUNCH_REPORTS`; the launcher prints each distinct message once and exits with the code that says what
happened. A mistake in the data or flags, or a preemption, is no crash: `--max-restarts` would only repeat it, so
the agent stops instead of restarting (`_FinchAgent`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from finch.errors import ConfigError

REPORTS_ENV = "FINCH_LAUNCH_REPORTS"
EXIT_MISTAKE, EXIT_PREEMPTED = 2, 75
FINAL_CODES = {EXIT_MISTAKE, EXIT_PREEMPTED}  # a restart repeats these: the agent stops instead
PROBE_SECONDS = 20  # how long a process listening on the rendezvous port has to answer as a torch store
                   # (the probe's own start, torch's import, included)


# ---- the launch flags, checked before anything starts ----------------------------------------------------------------
def check_launch_flags(flags: dict[str, Any]) -> None:
    """Refuse launch flags torchrun would reject with a traceback (or accept and then hang on)."""
    if flags.get("max_restarts") is not None and flags["max_restarts"] < 0:
        raise ConfigError(f"--max-restarts {flags['max_restarts']}: the number of restarts after a failure is 0 or "
                          f"more (0: no restart)")
    nodes = int(flags.get("nnodes") or 1)
    node_rank = flags.get("node_rank")
    if node_rank is not None and not 0 <= node_rank < nodes:
        raise ConfigError(f"--node-rank {node_rank}: with --nnodes {nodes} this machine's index is 0 to {nodes - 1}")
    if flags.get("rdzv_endpoint"):
        host, _ = endpoint_address(flags["rdzv_endpoint"])
        try:
            socket.getaddrinfo(host, None)
        except (OSError, UnicodeError) as error:  # socket.gaierror: a name no resolver knows
            raise ConfigError(f"--rdzv-endpoint {flags['rdzv_endpoint']}: the host {host!r} cannot be resolved "
                              f"({error}); give node 0's address or a name this machine resolves "
                              f"(e.g. 127.0.0.1:29500 on one machine)") from None


def endpoint_address(endpoint: str) -> tuple[str, int | None]:
    """`HOST[:PORT]` as (host, port); a port that is not a number from 1 to 65535 is refused."""
    host, _, port = endpoint.rpartition(":") if ":" in endpoint else (endpoint, "", "")
    host = host.strip("[]")  # [::1]:29500
    if not host:
        raise ConfigError(f"--rdzv-endpoint {endpoint!r}: give HOST:PORT, node 0's address (e.g. node0:29500)")
    if not port:
        return host, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--rdzv-endpoint {endpoint}: the port {port!r} is not a number from 1 to 65535 (e.g. "
                          f"{host}:29500)")
    return host, int(port)


def check_rendezvous_port(endpoint: str) -> None:
    """Refuse a rendezvous port held by a process that is not a torch store, within `PROBE_SECONDS`.

    torch's c10d rendezvous makes node 0 host the store on the port, or, when the port is taken, joins whatever
    listens there as a client; a client of something that never answers waits forever (no timeout applies to
    the handshake). Nothing listening is fine (node 0 starts the store, or will); a store is fine (node 0's). The
    handshake is tried in a child process, which can be killed when it hangs."""
    host, port = endpoint_address(endpoint)
    port = port or 29400  # torchrun's default for c10d
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS // 2):
            pass
    except OSError:
        return  # nothing listens there (yet): the store starts there, or node 0 will start it
    probe = ("import datetime, sys, torch.distributed as dist\n"
             "store = dist.TCPStore(sys.argv[1], int(sys.argv[2]), is_master=False, "
             "timeout=datetime.timedelta(seconds=int(sys.argv[3])))\n"
             "store.check(['finch-probe'])\n")
    try:
        answered = subprocess.run([sys.executable, "-c", probe, host, str(port), str(PROBE_SECONDS // 2)],
                                  capture_output=True, timeout=PROBE_SECONDS, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        answered = False
    if not answered:
        raise ConfigError(f"--rdzv-endpoint {endpoint}: port {port} on {host} is held by a process that is not a torch "
                          f"rendezvous store (it did not answer as one): pick a free port (e.g. {host}:29500), or "
                          f"stop what listens there")


# ---- what each rank leaves for the launcher ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one rank's command ended: its exit code, and its message for the launcher to print (once).

    kind: "mistake" (exit 2, the message says the fix), "preempted" (75), "peer" (this rank lost the others:
    another rank's message says why) or "failure" (1, the message is the traceback)."""

    code: int
    kind: str
    message: str = ""


def reporting() -> bool:
    """Whether this process is a rank of finch's own launcher (then its outcome goes to the launcher)."""
    return bool(os.environ.get(REPORTS_ENV)) and "RANK" in os.environ


def report(outcome: Outcome) -> None:
    """Leave this rank's outcome where the launcher reads it (one file per attempt and rank)."""
    folder = Path(os.environ[REPORTS_ENV])
    name = f"attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}-rank-{os.environ['RANK']}.json"
    (folder / f"{name}.tmp").write_text(json.dumps(dataclasses.asdict(outcome)))
    os.replace(folder / f"{name}.tmp", folder / name)


def outcomes(folder: Path, attempt: int) -> dict[int, Outcome]:
    """The outcomes the ranks of one attempt left, by rank."""
    found = {}
    for path in sorted(folder.glob(f"attempt-{attempt}-rank-*.json")):
        found[int(path.stem.rsplit("-", 1)[1])] = Outcome(**json.loads(path.read_text()))
    return found


# ---- the launcher ----------------------------------------------------------------------------------------------------
def launch(command: list[str], command_name: str) -> int:
    """Run torchrun's agent for `command` (`launch_command`'s) in this process; finch's exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.rendezvous.api import RendezvousTimeoutError
    from torch.distributed.launcher import api as launcher_api

    arguments = torchrun.parse_args(command[3:])  # after `python -m torch.distributed.run`
    if arguments.standalone:  # what torchrun.run does before it builds the configuration
        arguments.rdzv_backend, arguments.rdzv_endpoint, arguments.rdzv_id = "c10d", "localhost:0", _new_id()
    if arguments.master_port is None:
        arguments.master_port = 29500
    config, entrypoint, entry_args = torchrun.config_from_args(arguments)
    with tempfile.TemporaryDirectory(prefix="finch-launch-") as folder:
        os.environ[REPORTS_ENV] = folder
        agent = _agent_class()
        agent.shown = set()
        agent.reports = Path(folder)
        agent.command_name = command_name
        ordinary, launcher_api.LocalElasticAgent = launcher_api.LocalElasticAgent, agent
        try:
            launcher_api.launch_agent(config, entrypoint, list(entry_args))
            return 0
        except launcher_api.ChildFailedError as failed:
            return _ending(agent, {rank: failure.exitcode for rank, failure in failed.failures.items()}, None)
        except SignalException as stopped:
            return _ending(agent, {}, stopped.sigval)
        except RendezvousTimeoutError:
            raise ConfigError(f"the {config.max_nodes} machines did not all join at {config.rdzv_endpoint} within "
                              f"{config.rdzv_configs.get('join_timeout')} s (--rdzv-timeout): start the same command "
                              f"on every machine, each with its own --node-rank, the same --nnodes and "
                              f"--rdzv-endpoint (node 0's address, reachable from every machine)") from None
        finally:
            launcher_api.LocalElasticAgent = ordinary
            os.environ.pop(REPORTS_ENV, None)


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())


def _agent_class() -> Any:
    """torchrun's `LocalElasticAgent`, stopping at a mistake or a preemption rather than restarting, and saying
    why each attempt ended, once."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    class _FinchAgent(LocalElasticAgent):
        shown: set[str]
        reports: Path
        command_name: str

        def _monitor_workers(self, worker_group: Any) -> Any:
            result = super()._monitor_workers(worker_group)
            if result.is_failed():
                attempt = self._worker_group.spec.max_restarts - self._remaining_restarts
                found = outcomes(self.reports, attempt)
                exits = {rank: failure.exitcode for rank, failure in result.failures.items()}
                if (set(exits.values()) | {outcome.code for outcome in found.values()}) & FINAL_CODES:
                    self._remaining_restarts = 0  # a restart would repeat the mistake, or undo the preemption
                _show(type(self), found, exits)
                if self._remaining_restarts > 0:
                    print(f"finch {self.command_name}: restarting every process ({self._remaining_restarts} "
                          f"restart(s) left), from the newest checkpoint", file=sys.stderr, flush=True)
                elif not (set(exits.values()) & FINAL_CODES) and self._worker_group.spec.max_restarts:
                    print(f"finch {self.command_name}: no restart left (--max-restarts "
                          f"{self._worker_group.spec.max_restarts})", file=sys.stderr, flush=True)
            return result

    return _FinchAgent


def _show(agent: Any, found: dict[int, Outcome], exits: dict[int, int]) -> None:
    """Print why the attempt ended, each distinct message once: the ranks' own messages, then the ranks that ended
    without one (killed); "lost the others" only when nothing else says why."""
    messages = [outcome.message for _, outcome in sorted(found.items()) if outcome.message and outcome.kind != "peer"]
    said = bool(messages)  # then the agent's SIGTERM to the others is no news: it stopped them because of those
    for rank, code in sorted(exits.items()):
        if rank not in found and code not in (0, EXIT_PREEMPTED) and not (said and code == -signal.SIGTERM):
            messages.append(f"finch {agent.command_name}: process {rank} {_ended_by(code)} without a message (out "
                            f"of memory, or killed?)")
    if not messages:
        messages = [outcome.message for _, outcome in sorted(found.items()) if outcome.message]
    for message in dict.fromkeys(messages):
        if message not in agent.shown:
            agent.shown.add(message)
            print(message, file=sys.stderr, flush=True)


def _ended_by(code: int) -> str:
    if code < 0:
        with_name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        return f"was killed by {with_name}"
    return f"ended with exit code {code}"


def _ending(agent: Any, exits: dict[int, int], signal_number: int | None) -> int:
    """The launcher's exit code from the last attempt's outcomes (and the exit codes torch saw)."""
    attempts = sorted({int(path.name.split("-")[1]) for path in agent.reports.glob("attempt-*.json")})
    found = outcomes(agent.reports, attempts[-1]) if attempts else {}
    _show(agent, found, exits)
    codes = set(exits.values()) | {outcome.code for outcome in found.values()}
    if EXIT_PREEMPTED in codes:
        return EXIT_PREEMPTED
    if EXIT_MISTAKE in codes:
        return EXIT_MISTAKE
    if signal_number is not None:
        print(f"finch {agent.command_name}: stopped by {signal.Signals(signal_number).name} before a checkpoint was "
              f"saved", file=sys.stderr)
        return 128 + int(signal_number)
    return 1
