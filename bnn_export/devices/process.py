"""Run a local program with a hard time limit, killing its whole process group on the way out."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any


@dataclass(frozen=True)
class CompletedRun:
    """What a command printed and how it ended; ``seconds`` is wall time seen by this host."""

    stdout: str
    stderr: str
    returncode: int
    seconds: float


def _decode(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The child was started in a new session, so its pid is its process group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_process(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | None = None,
    stdin_path: str | None = None,
    stdout_path: str | None = None,
    env: dict[str, str] | None = None,
) -> CompletedRun:
    """Run ``argv`` (no shell) and wait at most ``timeout`` seconds.

    Raises ``subprocess.TimeoutExpired`` after killing the process group on timeout,
    ``FileNotFoundError``/``PermissionError`` when the program cannot be started, and re-raises
    ``KeyboardInterrupt`` after killing the child. With ``stdout_path`` the output goes to that
    file and ``CompletedRun.stdout`` is empty.
    """
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        stdin: IO[Any] | int = subprocess.DEVNULL
        stdout: IO[Any] | int = subprocess.PIPE
        if stdin_path is not None:
            stdin = stack.enter_context(open(stdin_path, "rb"))  # noqa: SIM115
        if stdout_path is not None:
            stdout = stack.enter_context(open(stdout_path, "wb"))  # noqa: SIM115
        proc = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            # Timeout, KeyboardInterrupt or anything else: never leave the child running.
            _kill_group(proc)
            proc.communicate()
            raise
    return CompletedRun(_decode(out), _decode(err), proc.returncode, time.monotonic() - start)
