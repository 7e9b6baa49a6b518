"""A real one-node Slurm cluster (Debian's slurmctld/slurmd 22.05 and munge) on 127.0.0.1.

`slurm_cluster` (one per test session: tests/conftest.py registers it) creates a munge key,
starts `munged`, `slurmctld` and `slurmd` in the foreground as root, on free loopback ports,
with their sockets, state, spool and logs in a temporary folder; it waits until the node is
idle, and at the end cancels every job and stops the daemons. Client commands (sbatch,
squeue, scontrol, scancel, and submitit through them) reach it with `SLURM_CONF` from
`SlurmCluster.env`. The cluster has no GPUs and no accounting (`sacct` fails). A requeued
job waits `cred_expire` (5 s here, 120 s by default) before it may start again, and the
scheduler runs every second.

Tests that need it skip, naming the Debian packages, when the daemons are not installed,
and skip when not run as root (the daemons run as root here, as CI does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import free_port, log_tail, stop

PACKAGES = "slurmctld slurmd munge"
COMMANDS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol")
STARTUP_TIMEOUT_S = 30
PARTITION = "debug"
# The delay before a requeued job may start again (Slurm's default is 120 s).
CRED_EXPIRE_S = 5


@dataclass(frozen=True)
class SlurmCluster:
    """A running one-node cluster.

    Attributes:
        folder: the temporary folder with its config, state, spool and logs.
        conf: its slurm.conf.
        partition: the (default) partition.
        cpus: the node's CPUs.
    """

    folder: Path
    conf: Path
    partition: str
    cpus: int

    @property
    def env(self) -> dict[str, str]:
        """The environment variables a client command needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def command(self, *args: str) -> str:
        """Run a Slurm client command against this cluster; its stdout."""
        done = subprocess.run(
            args, env={**os.environ, **self.env}, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def logs(self) -> str:
        """The end of the daemons' logs, for a failure message."""
        return "\n".join(
            f"--- {name}\n{log_tail(self.folder / 'log' / name, 2000)}"
            for name in ("munged.log", "slurmctld.log", "slurmd.log")
        )


def missing() -> str | None:
    """Why the cluster cannot start here, or None."""
    absent = [c for c in COMMANDS if shutil.which(c) is None]
    if absent:
        return f"{', '.join(absent)} not installed: apt-get install {PACKAGES}"
    if os.geteuid() != 0:
        return "the test Slurm cluster runs slurmctld and slurmd as root (as CI does); run as root"
    return None


def _node_line() -> str:
    """This machine as slurm.conf's NodeName line (`slurmd -C`: CPUs, memory)."""
    probe = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
    line = next(x for x in probe.stdout.splitlines() if x.startswith("NodeName="))
    return f"{line} NodeAddr=127.0.0.1 State=UNKNOWN"


def _write_conf(folder: Path) -> tuple[Path, int, str]:
    """slurm.conf for this machine as one node on 127.0.0.1, in `folder`; returns it, the
    node's CPUs and its name (the host name)."""
    node = _node_line()
    fields = dict(f.split("=", 1) for f in node.split())
    cpus, host = int(fields["CPUs"]), fields["NodeName"]
    ctld_port = free_port()
    conf = folder / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                f"ClusterName=test{ctld_port}",
                f"SlurmctldHost={host}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={ctld_port}",
                f"SlurmdPort={free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={folder / 'munge' / 'socket'},cred_expire={CRED_EXPIRE_S}",
                f"StateSaveLocation={folder / 'state'}",
                f"SlurmdSpoolDir={folder / 'spool'}",
                f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
                f"SlurmdPidFile={folder / 'slurmd.pid'}",
                f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
                "MailProg=/bin/true",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SwitchType=switch/none",
                "MpiDefault=none",
                "SchedulerType=sched/backfill",
                "SchedulerParameters=sched_interval=1,bf_interval=1",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "ReturnToService=2",
                "KillWait=5",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                node,
                f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    return conf, cpus, host


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A one-node Slurm cluster with munge on 127.0.0.1 (see the module's docstring)."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    for part in ("state", "spool", "log", "munge", "munge-key"):
        (folder / part).mkdir()
    (folder / "munge-key").chmod(0o700)
    key = folder / "munge-key" / "munge.key"
    subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
    conf, cpus, host = _write_conf(folder)
    env_conf = {**os.environ, "SLURM_CONF": str(conf)}
    log = folder / "log"
    munge = folder / "munge"
    daemons = [
        _start(
            [
                "munged", "--foreground", "--force", f"--socket={munge / 'socket'}",
                f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
                f"--seed-file={munge / 'seed'}", f"--log-file={log / 'munged.log'}",
            ],
            log / "munged.out",
        ),
    ]  # fmt: skip
    cluster = SlurmCluster(folder, conf, PARTITION, cpus)
    try:
        _wait_for(lambda: (munge / "socket").exists(), "munged's socket", cluster)
        daemons.append(_start(["slurmctld", "-D", "-i", "-f", str(conf)], log / "slurmctld.out"))
        daemons.append(_start(["slurmd", "-D", "-f", str(conf), "-N", host], log / "slurmd.out"))
        _wait_for(lambda: _node_state(env_conf) == "idle", "idle node", cluster)
        yield cluster
    finally:
        subprocess.run(["scancel", "--quiet", "--full", "--user=root"], env=env_conf, check=False)
        for daemon in reversed(daemons):
            stop(daemon)


def _node_state(env: dict[str, str]) -> str:
    done = subprocess.run(
        ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _wait_for(ready: Callable[[], bool], what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"Slurm test cluster: no {what} within {STARTUP_TIMEOUT_S} s\n{cluster.logs()}"
            )
        time.sleep(0.1)
