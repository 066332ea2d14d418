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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
REDIS_SERVER = shutil.which("redis-server")


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


class GatewayProcess:
    """``wirepipe serve`` in a subprocess, with the fault apps registered."""

    def __init__(self, port: int, redis_url: str, secret: str, *extra: str, apps: bool = True) -> None:
        self.port = port
        self.args = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            "--redis",
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
