"""A real multi-node Ray cluster on this one machine, on loopback only: a head and N workers.

Each node is one ``ray start --block`` in a session of its own, and every process of the node
(raylet, agents, workers — which Ray puts in process groups of their own) stays in that session:
killing or stopping the session's processes is what losing or freezing a machine looks like to
the rest of the cluster, and killing every session leaves nothing of the cluster behind. The
nodes listen on 127.0.0.1 (head), 127.0.0.2, 127.0.0.3, ... — the whole of 127/8 is loopback on
Linux — so each has its own address and Ray tells them apart as it would separate machines.

``ray start`` turns a loopback ``--node-ip-address`` into the machine's routable address (it
assumes a multi-node cluster spans machines); the launcher below keeps the address as given.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LAUNCHER = (
    "import sys\n"
    "from ray._private import services\n"
    "services.resolve_ip_for_localhost = lambda host: host\n"
    "from ray.scripts.scripts import main\n"
    "sys.argv[0] = 'ray'\n"
    "main()\n"
)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class Node:
    def __init__(self, ip: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.ip = ip
        self.proc = proc
        self.log = log
        self.stopped = False

    @property
    def sid(self) -> int:
        return self.proc.pid  # the session leader: its pid is the session's id

    def signal(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def pids(self) -> list[int]:
        """Every live process of this node (its session)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == self.sid and fields[0] != "Z":
                found.append(int(entry))
        return found


class LocalCluster:
    """``ray start`` a head (127.0.0.1) and ``workers`` nodes (127.0.0.2, ...), ``cpus`` each."""

    def __init__(self, tmp: Path, workers: int = 2, cpus: int = 2) -> None:
        self.tmp = tmp
        self.workers = workers
        self.cpus = cpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[Node] = []
        # No token auth: every node listens on loopback only, and a driver process that has
        # already used a local Ray instance (as the other Ray tests do) keeps that instance's
        # token settings, which a cluster of its own would refuse.
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def _start_node(self, ip: str, extra: list[str]) -> Node:
        # Worker ports below the ephemeral range, where free_port() picks the others.
        low = 10000 + 200 * len(self.nodes) + 1000 * (os.getpid() % 20)
        log = self.tmp / f"node-{ip}.log"
        args = [
            sys.executable,
            "-c",
            LAUNCHER,
            "start",
            "--block",
            f"--node-ip-address={ip}",
            f"--num-cpus={self.cpus}",
            "--num-gpus=0",
            "--disable-usage-stats",
            # Explicit ports: some of a raylet's listeners bind every interface, so two nodes
            # on one machine must not both pick the same one.
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 199}",
            "--object-store-memory=100000000",
            *extra,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        node = Node(ip, proc, log)
        self.nodes.append(node)
        return node

    def start(self, timeout: float = 120.0) -> None:
        head = [
            "--head",
            f"--port={self.port}",
            f"--ray-client-server-port={free_port()}",
            "--include-dashboard=false",
            f"--temp-dir={self.tmp / 'ray'}",
        ]
        self._start_node("127.0.0.1", head)
        self._wait_for("Ray runtime started", self.nodes[0], timeout)
        for i in range(self.workers):  # one at a time: a node picks its ports as it starts
            node = self._start_node(f"127.0.0.{i + 2}", [f"--address={self.address}"])
            self._wait_for("Ray runtime started", node, timeout)

    def _wait_for(self, text: str, node: Node, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in node.log.read_text(errors="replace"):
                return
            if node.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(
            f"Ray node {node.ip} did not start: {node.log.read_text(errors='replace')[-3000:]}"
        )

    def add_worker(self, timeout: float = 120.0) -> Node:
        """One more worker node, on the next loopback address."""
        node = self._start_node(f"127.0.0.{len(self.nodes) + 1}", [f"--address={self.address}"])
        self._wait_for("Ray runtime started", node, timeout)
        return node

    def kill(self, node: Node) -> None:
        """The machine is gone: every process of the node dies at once."""
        node.signal(signal.SIGKILL)
        node.stopped = True

    def freeze(self, node: Node) -> None:
        for _ in range(3):  # a process forked meanwhile is stopped on the next pass
            node.signal(signal.SIGSTOP)

    def thaw(self, node: Node) -> None:
        node.signal(signal.SIGCONT)

    def pids(self) -> list[int]:
        return [pid for node in self.nodes for pid in node.pids()]

    def shutdown(self, timeout: float = 30.0) -> None:
        """Kill every node's processes and wait until none is left."""
        for node in self.nodes:
            node.signal(signal.SIGCONT)
            node.signal(signal.SIGKILL)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            for node in self.nodes:
                node.signal(signal.SIGKILL)
            time.sleep(0.1)
