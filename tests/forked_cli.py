"""Run ``maml-tune`` commands in forks of one process that imported everything once.

A command runs as its own process (exit code, ``os._exit``, signals, a hang killed at the
deadline: all as for the console script), through the console script's own ``main()``, but
without paying ~2 s of imports per case: the bad-input suite runs over a hundred of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SERVER = r"""
import json, os, signal, sys, time, traceback

import numpy, optuna, PIL.Image, sqlalchemy, torch  # what the commands import, paid once

torch.set_num_threads(1)
import maml_tune.cli.main, maml_tune.core.run, maml_tune.families.registry, maml_tune.search.storage

protocol = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            sys.argv = ["maml-tune", *request["args"]]
            maml_tune.cli.main.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 99
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = started + request["timeout"]
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = 0
            break
        time.sleep(0.01)
    code = os.waitstatus_to_exitcode(status) if not timed_out else None
    protocol.write(json.dumps({"code": code, "elapsed": time.monotonic() - started}) + "\n")
    protocol.flush()
"""


@dataclass(frozen=True)
class Done:
    """What one forked command left: its exit code (None if killed at the deadline)."""

    code: int | None
    stdout: str
    stderr: str
    elapsed: float


class ForkedCli:
    """One server process; :meth:`run` forks it for each command. Use as a context manager."""

    def __init__(self, env: dict[str, str], cwd: Path):
        self.env, self.cwd = env, cwd
        self.scratch = Path(tempfile.mkdtemp(prefix="forked-cli-"))
        self.server = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> Done:
        out, err = self.scratch / "stdout", self.scratch / "stderr"
        request = {
            "args": args,
            "env": {**self.env, **(env or {})},
            "cwd": str(self.cwd),
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
        }
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        reply = self.server.stdout.readline()
        if not reply:
            raise RuntimeError(f"the forked-CLI server died (exit {self.server.wait()})")
        reply = json.loads(reply)
        return Done(
            reply["code"],
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
            reply["elapsed"],
        )

    def __enter__(self) -> ForkedCli:
        return self

    def __exit__(self, *exc) -> None:
        self.server.stdin.close()
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()
        for path in self.scratch.iterdir():
            os.unlink(path)
        os.rmdir(self.scratch)
