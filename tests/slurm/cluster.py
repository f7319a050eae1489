"""A private single-node Slurm 22.05 cluster for the tests: munged, MariaDB, slurmdbd, slurmctld and slurmd.

Every daemon runs in the foreground as a child of the starting process (PID 1 here reaps no orphans), with
its own ports, config files, munge socket and key, database and state under one state directory, so a Slurm
already running on the machine is left alone. The pids are recorded with their start times, so stop (even
from another process) signals exactly those processes. Only the standard library is used, so the script
also runs on its own:

    python tests/slurm/cluster.py start STATE_DIR    # install packages if missing, start, wait until idle
    eval "$(python tests/slurm/cluster.py env STATE_DIR)"; sinfo; sbatch ...
    python tests/slurm/cluster.py stop STATE_DIR     # cancel jobs, stop exactly the daemons started
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
PROGRAMS = ("munged", "mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "slurmctld", "slurmd", "sinfo")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
CLUSTER_NAME = "litdendrite"
NODE = "localhost"  # always resolves, so MASTER_ADDR taken from SLURM_NODELIST works for DDP on any machine
PARTITION = "debug"
SHORT_PARTITION = "short"
SHORT_PARTITION_MAX_MIN = 2
MIN_DECLARED_CPUS = 4
DB_USER = "slurm"
DB_PASSWORD = "slurm"


class ClusterError(RuntimeError):
    """The test cluster could not be installed, started or stopped; the message says which part and why."""


def find_program(name: str) -> str | None:
    """Full path of an executable, also looking in the sbin directories that a non-login PATH may lack."""
    return shutil.which(name, path=SEARCH_PATH)


def require_program(name: str) -> str:
    """Full path of a program that install_packages provides; a clear error if it is missing."""
    path = find_program(name)
    if path is None:
        raise ClusterError(f"`{name}` is not installed: install the Debian packages {PACKAGES}")
    return path


def install_packages(timeout_s: float = 900) -> None:
    """Install the Debian packages with apt-get (update first, no recommends) when any program is missing."""
    if all(find_program(name) for name in PROGRAMS):
        return
    if os.geteuid() != 0:
        raise ClusterError(f"Slurm is not installed and installing it needs root: run as root, or install {PACKAGES}")
    if find_program("apt-get") is None:
        raise ClusterError(f"Slurm is not installed and there is no apt-get: install {PACKAGES} by hand")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for command in (
        ["apt-get", *lock, "update", "-qq"],
        ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-3000:]
            raise ClusterError(f"`{shlex.join(command)}` failed (exit {result.returncode}):\n{output}")
    missing = [name for name in PROGRAMS if find_program(name) is None]
    if missing:
        raise ClusterError(f"apt-get installed {PACKAGES} but {missing} are still missing")


def free_ports(count: int) -> list[int]:
    """Ports that nothing listens on now, from the kernel's ephemeral range (so not Slurm's default 6817-6819)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of a live (non-zombie) process, which tells a reused pid apart; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file through a temporary file in the same directory and os.replace."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


class SlurmCluster:
    """A single-node Slurm cluster whose config, sockets, databases, logs and pid records live in state_dir."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.partition = PARTITION
        self.short_partition = SHORT_PARTITION
        self.short_partition_max_min = SHORT_PARTITION_MAX_MIN
        self.node = NODE
        self.cpus = max(os.cpu_count() or 1, MIN_DECLARED_CPUS)
        self._children: dict[str, subprocess.Popen] = {}

    @property
    def conf(self) -> Path:
        """The slurm.conf that every Slurm command of this cluster must read (through SLURM_CONF)."""
        return self.state_dir / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point Slurm commands (sbatch, sacct, scontrol, submitit) at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    @property
    def _pid_file(self) -> Path:
        return self.state_dir / "pids.json"

    @property
    def _munge_socket(self) -> Path:
        return self.state_dir / "munge" / "munge.socket"

    @property
    def _db_socket(self) -> Path:
        return self.state_dir / "mariadb" / "mariadb.sock"

    def log(self, daemon: str) -> Path:
        """The file that holds a daemon's stdout and stderr."""
        return self.state_dir / "log" / f"{daemon}.log"

    def run(self, *command: str, timeout_s: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm command (sinfo, scontrol, sacctmgr, ...) against this cluster and capture its output."""
        program = find_program(command[0]) or command[0]
        env = {**self._clean_environ(), **self.env}
        result = subprocess.run(
            [program, *command[1:]], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check and result.returncode != 0:
            raise ClusterError(f"`{shlex.join(command)}` failed (exit {result.returncode}): {result.stderr.strip()}")
        return result

    def start(self, timeout_s: float = 180) -> None:
        """Stop what an earlier start in state_dir left running, wipe it, start every daemon, wait until idle."""
        if os.geteuid() != 0:
            raise ClusterError("the test cluster runs its daemons as root (SlurmUser=root): start it as root")
        install_packages()
        self.stop()
        self._prepare_state_dir()
        ctld_port, slurmd_port, dbd_port, db_port = free_ports(4)
        self._write_configs(ctld_port, slurmd_port, dbd_port, db_port)
        deadline = time.monotonic() + timeout_s
        try:
            self._start_munged(deadline)
            self._start_mariadb(db_port, deadline)
            self._spawn("slurmdbd", [require_program("slurmdbd"), "-D"])
            self._wait(f"slurmdbd listening on port {dbd_port}", lambda: self._listening(dbd_port), deadline)
            self._spawn("slurmctld", [require_program("slurmctld"), "-D", "-i"])
            self._spawn("slurmd", [require_program("slurmd"), "-D", "-N", self.node])
            self._wait(f"node {self.node} idle in `sinfo`", self._node_idle, deadline)
            self._wait(f"cluster {CLUSTER_NAME} registered in slurmdbd", self._cluster_registered, deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 30) -> None:
        """Cancel this cluster's jobs, then stop the daemons that start recorded, newest first, and wait for them."""
        records = self._read_pid_records()
        if not records:
            return
        if any(record["name"] == "slurmctld" and self._alive(record) for record in records):
            self._cancel_jobs(timeout_s)
        for record in reversed(records):
            self._terminate(record, timeout_s)
        self._pid_file.unlink(missing_ok=True)

    def _clean_environ(self) -> dict[str, str]:
        """os.environ without Slurm variables of an enclosing job, which would point commands elsewhere."""
        return {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "SBATCH_"))}

    def _prepare_state_dir(self) -> None:
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True)
        self.state_dir.chmod(0o755)
        # munged runs as the munge user, which must be able to reach its socket through every parent directory.
        for directory in self.state_dir.parents:
            if not directory.stat().st_mode & 0o001:
                raise ClusterError(
                    f"{directory} is not searchable by others, so munged (user munge) cannot reach its socket "
                    f"under {self.state_dir}: choose a state directory whose parents are all `chmod o+x`"
                )
        for name in ("etc", "log", "run", "slurmctld", "slurmd", "mariadb", "munge"):
            (self.state_dir / name).mkdir()
            (self.state_dir / name).chmod(0o755)
        munge = pwd.getpwnam("munge")
        os.chown(self.state_dir / "munge", munge.pw_uid, munge.pw_gid)

    def _write_configs(self, ctld_port: int, slurmd_port: int, dbd_port: int, db_port: int) -> None:
        state, etc = self.state_dir, self.state_dir / "etc"
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        slurm_conf = f"""\
ClusterName={CLUSTER_NAME}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self._munge_socket},cred_expire=10
StateSaveLocation={state}/slurmctld
SlurmdSpoolDir={state}/slurmd
SlurmctldPidFile={state}/run/slurmctld.pid
SlurmdPidFile={state}/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
SchedulerParameters=sched_interval=2,bf_interval=2
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
KillWait=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={self._munge_socket}
JobAcctGatherType=jobacct_gather/none
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName={SHORT_PARTITION} Nodes={self.node} MaxTime={SHORT_PARTITION_MAX_MIN} State=UP
"""
        slurmdbd_conf = f"""\
AuthType=auth/munge
AuthInfo=socket={self._munge_socket}
DbdHost={self.node}
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={state}/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser={DB_USER}
StoragePass={DB_PASSWORD}
StorageLoc=slurm_acct_db
"""
        write_atomic(etc / "slurm.conf", slurm_conf)
        write_atomic(etc / "slurmdbd.conf", slurmdbd_conf, mode=0o600)

    def _start_munged(self, deadline: float) -> None:
        munge = pwd.getpwnam("munge")
        key = self.state_dir / "munge" / "munge.key"
        write_atomic(key, os.urandom(128).hex(), mode=0o400)
        os.chown(key, munge.pw_uid, munge.pw_gid)
        directory = self._munge_socket.parent
        as_munge = ["setpriv", f"--reuid={munge.pw_uid}", f"--regid={munge.pw_gid}", "--clear-groups"]
        self._spawn(
            "munged",
            [
                *as_munge,
                require_program("munged"),
                "--foreground",
                "--num-threads=10",
                f"--socket={self._munge_socket}",
                f"--key-file={key}",
                f"--pid-file={directory}/munged.pid",
                f"--seed-file={directory}/munged.seed",
            ],
        )
        self._wait("munged socket", self._munge_socket.exists, deadline)

    def _start_mariadb(self, port: int, deadline: float) -> None:
        directory = self.state_dir / "mariadb"
        install = [
            require_program("mariadb-install-db"),
            "--no-defaults",
            f"--datadir={directory}/data",
            "--user=root",
            "--skip-test-db",
        ]
        result = subprocess.run(install, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
        self._spawn(
            "mariadbd",
            [
                require_program("mariadbd"),
                "--no-defaults",
                "--user=root",
                f"--datadir={directory}/data",
                f"--socket={self._db_socket}",
                f"--pid-file={directory}/mariadbd.pid",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--performance-schema=OFF",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=16M",
            ],
        )
        client = [require_program("mariadb"), "--no-defaults", f"--socket={self._db_socket}", "--user=root"]
        self._wait("MariaDB accepting connections", lambda: self._succeeds([*client, "-e", "SELECT 1"]), deadline)
        user = f"'{DB_USER}'@'127.0.0.1'"
        grant = f"CREATE USER {user} IDENTIFIED BY '{DB_PASSWORD}'; GRANT ALL ON slurm_acct_db.* TO {user};"
        result = subprocess.run([*client, "-e", grant], capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise ClusterError(f"creating the slurmdbd database user failed: {result.stderr.strip()}")

    def _spawn(self, name: str, command: list[str]) -> None:
        """Start one daemon in the foreground as a child process and record its pid and start time."""
        env = {**self._clean_environ(), **self.env}
        with open(self.log(name), "ab") as log:
            child = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._children[name] = child
        record = {"name": name, "pid": child.pid, "start_time": process_start_time(child.pid)}
        records = [*self._read_pid_records(), record]
        write_atomic(self._pid_file, json.dumps(records, indent=1))

    def _read_pid_records(self) -> list[dict]:
        if not self._pid_file.exists():
            return []
        return json.loads(self._pid_file.read_text())

    def _alive(self, record: dict) -> bool:
        """Whether the process a pid record names still runs (the same process, not a reused pid)."""
        return record["start_time"] is not None and process_start_time(record["pid"]) == record["start_time"]

    def _terminate(self, record: dict, timeout_s: float) -> None:
        child = self._children.pop(record["name"], None)
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10)):
            if not self._alive(record):
                break
            os.kill(record["pid"], sig)
            deadline = time.monotonic() + wait_s
            while self._alive(record) and time.monotonic() < deadline:
                time.sleep(0.1)
        if self._alive(record):
            raise ClusterError(f"{record['name']} (pid {record['pid']}) survived SIGKILL")
        if child is not None:
            child.wait()

    def _cancel_jobs(self, timeout_s: float) -> None:
        """Cancel every job of this cluster and wait until none is left, so no job outlives the daemons."""
        deadline = time.monotonic() + timeout_s
        try:
            self.run("scancel", "--user=root", timeout_s=10, check=False)
            while time.monotonic() < deadline:
                result = self.run("squeue", "--noheader", "--states=all", "--format=%T", timeout_s=10, check=False)
                if result.returncode != 0 or not set(result.stdout.split()) & {"RUNNING", "COMPLETING", "PENDING"}:
                    return
                time.sleep(0.5)
        except subprocess.TimeoutExpired:
            return  # slurmctld does not answer, so it can no longer start or track any job

    def _wait(self, what: str, condition: Callable[[], bool], deadline: float) -> None:
        """Poll condition until it holds; fail with the daemon's log if a daemon died or the deadline passed."""
        while True:
            for name, child in self._children.items():
                if child.poll() is not None:
                    raise ClusterError(
                        f"{name} exited with {child.returncode} while waiting for {what}; "
                        f"its log {self.log(name)} ends with:\n{self._log_tail(name)}"
                    )
            try:
                if condition():
                    return
            except subprocess.TimeoutExpired:
                pass  # a command that hangs while a daemon starts up counts as not ready yet
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {r['name']}:\n{self._log_tail(r['name'])}" for r in self._read_pid_records())
                raise ClusterError(f"timed out waiting for {what}; daemon logs under {self.state_dir}/log:\n{tails}")
            time.sleep(0.25)

    def _log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log(name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"

    def _succeeds(self, command: list[str]) -> bool:
        return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode == 0

    def _listening(self, port: int) -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    def _node_idle(self) -> bool:
        result = self.run("sinfo", "--noheader", "--Node", "--format=%T", check=False)
        return result.returncode == 0 and set(result.stdout.split()) == {"idle"}

    def _cluster_registered(self) -> bool:
        result = self.run("sacctmgr", "--noheader", "--parsable2", "show", "cluster", "format=cluster", check=False)
        return result.returncode == 0 and CLUSTER_NAME in result.stdout.split()


def main(argv: list[str] | None = None) -> int:
    """Command line: start, stop, or print the environment of the cluster in a state directory."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("start", "stop", "env"))
    parser.add_argument("state_dir", help="directory that holds everything of this cluster (wiped by start)")
    args = parser.parse_args(argv)
    cluster = SlurmCluster(args.state_dir)
    try:
        if args.command == "start":
            began = time.monotonic()
            cluster.start()
            print(f"cluster up in {time.monotonic() - began:.1f} s; use it with:", file=sys.stderr)
        elif args.command == "stop":
            cluster.stop()
            return 0
        print(" ".join(f"export {key}={shlex.quote(value)}" for key, value in cluster.env.items()))
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
