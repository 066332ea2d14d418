"""Real servers the fault suite starts and kills: private Redis servers and gateway processes.

Every server here is a real process on 127.0.0.1; readiness is read from the
server's own output, never guessed with a clock.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of the test's own, on its own port, that it may kill and restart."""

    def __init__(self, workdir: Path, *, persistent: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.dir = workdir
        self.persistent = persistent
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self._drain: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--logfile",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        if self.persistent:  # every acknowledged write is on disk before the reply
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        args += list(self.extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = self.proc.stdout
        assert out is not None
        seen = []
        for line in out:  # until the server says it listens
            seen.append(line)
            if "Ready to accept connections" in line:
                # keep reading what it says, so that a full pipe never stalls it
                self._drain = threading.Thread(target=out.read, daemon=True)
                self._drain.start()
                return
        raise RuntimeError("redis-server did not start:\n" + "".join(seen))

    def kill(self) -> None:
        """SIGKILL: no goodbye, no save."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self._drain is not None:
            self._drain.join()  # EOF once the server is gone
            self._drain = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


class PrivateCluster:
    """A real Redis Cluster of ``masters`` masters (no replicas) on loopback, of the test's own.

    Each node is a :class:`PrivateRedis` with ``--cluster-enabled yes``, its
    own ``nodes-<port>.conf`` and a cluster bus port of its own (picked free,
    not ``port + 10000``, which may be taken or past 65535).
    ``redis-cli --cluster create`` assigns the slots and waits until the
    nodes agree on the configuration; ``start`` then asks every node
    ``CLUSTER INFO`` until each says ``cluster_state:ok``.
    """

    def __init__(self, workdir: Path, *, masters: int = 3, extra: tuple[str, ...] = ()) -> None:
        self.dir = workdir
        self.nodes: list[PrivateRedis] = []
        for _ in range(masters):
            node = PrivateRedis(workdir, extra=())
            node.extra = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{node.port}.conf",
                "--cluster-port",
                str(free_port()),
                *extra,
            )
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """A seed node's URL: a cluster client finds the other nodes from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        assert REDIS_CLI is not None
        try:
            for node in self.nodes:
                node.start()
            create = subprocess.run(
                [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
                + ["--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if create.returncode != 0 or "[OK] All 16384 slots covered" not in create.stdout:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}")
            self.wait_ok()
        except BaseException:
            self.kill()
            raise

    def wait_ok(self, nodes: list[PrivateRedis] | None = None) -> None:
        """Return once every node (of ``nodes``) reports ``cluster_state:ok``.

        The nodes settle their state on their own cluster cron (every 100 ms);
        nothing announces it, so this re-asks, a bounded number of times.
        """
        import redis

        for node in nodes if nodes is not None else self.nodes:
            client = redis.Redis(port=node.port, socket_timeout=10)
            try:
                for _ in range(1200):  # 1200 * 25 ms: a minute on a loaded machine
                    info = client.cluster("INFO")
                    if info.get("cluster_state") == "ok":
                        break
                    time.sleep(0.025)
                else:
                    raise RuntimeError(f"node {node.port} never reached cluster_state:ok: {info}")
            finally:
                client.close()

    def master_of(self, key: str) -> PrivateRedis:
        """The master that serves ``key``'s hash slot (per the first live node's CLUSTER SLOTS)."""
        import redis
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        live = next(n for n in self.nodes if n.proc is not None)
        client = redis.Redis(port=live.port, socket_timeout=10)
        try:
            for start, end, master, *_ in client.cluster("SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        finally:
            client.close()
        raise LookupError(f"no node serves slot {slot}")

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


class GatewayProcess:
    """``wirepipe serve`` in a subprocess, with the fault apps registered (``cluster``: ``--redis-cluster``)."""

    def __init__(
        self, port: int, redis_url: str, secret: str, *extra: str, apps: bool = True, cluster: bool = False
    ) -> None:
        self.port = port
        self.args = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            "--redis-cluster" if cluster else "--redis",
            redis_url,
            "--secret",
            secret,
            *(["--app", "slow=faultapps:slow"] if apps else []),
            "--no-ui",
            *extra,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.out: list[str] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]), PYTHONUNBUFFERED="1")
        for name in ("WIREPIPE_REDIS", "WIREPIPE_REDIS_CLUSTER"):  # the store is the one given here
            env.pop(name, None)
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # until it says it serves
            self.out.append(line)
            if line.startswith("wirepipe serving"):
                return
        raise RuntimeError("the gateway did not start:\n" + "".join(self.out))

    def rest_of_output(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        self.out.append(self.proc.stdout.read())
        self.proc.stdout.close()
        return "".join(self.out)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


class WorkerProcess:
    """``wirepipe worker`` in a subprocess, running the fault apps."""

    def __init__(self, redis_url: str, *extra: str) -> None:
        self.args = [
            sys.executable,
            "-m",
            "gateway.cli",
            "worker",
            "--redis",
            redis_url,
            "--app",
            "slow=faultapps:slow",
            *extra,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.out: list[str] = []
        self._drain: threading.Thread | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
        )
        out = self.proc.stdout
        assert out is not None
        for line in out:  # until it says it takes runs
            self.out.append(line)
            if line.startswith("wirepipe worker"):
                # keep reading what it says, so that a full pipe never stalls it
                self._drain = threading.Thread(target=lambda: self.out.extend(out), daemon=True)
                self._drain.start()
                return
        raise RuntimeError("the worker did not start:\n" + "".join(self.out))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no final status, no lease release."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self._drain is not None:
            self._drain.join()
            self._drain = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
