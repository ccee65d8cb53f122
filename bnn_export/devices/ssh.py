"""A device reached with the system OpenSSH client (``ssh``), driven by argument lists.

Files travel as ``ssh HOST 'cat > PATH'`` / ``ssh HOST 'cat PATH'`` so that remote paths are
always shell-quoted by us: scp quotes (or globs) remote paths differently across versions.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bnn_export.devices.errors import DeviceError
from bnn_export.devices.process import CompletedRun, run_process
from bnn_export.devices.shell import ShellDevice

STRICT_HOST_KEY_CHOICES = ("yes", "accept-new", "no")
_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
_HOST = re.compile(r"[A-Za-z0-9._:%][A-Za-z0-9._:%-]*")

# ssh's own exit status for connection and authentication errors.
_SSH_FAILURE = 255

# (pattern in ssh's stderr, reason, fix); checked in order.
_SSH_FAULTS = (
    (
        r"permission denied|too many authentication failures",
        "auth",
        "check the user name and the key (--ssh-identity), and that the key's public half is in "
        "the device's ~/.ssh/authorized_keys",
    ),
    (
        r"host key verification failed|remote host identification has changed",
        "host-key",
        "add the device's host key to your known_hosts (ssh once by hand), or pass a known_hosts "
        "file; if the key changed on purpose, remove the old line with `ssh-keygen -R HOST`",
    ),
    (
        r"closed by remote host|connection reset|broken pipe|server not responding"
        r"|connection closed by|client_loop",
        "connection-lost",
        "the link dropped while a command ran: check the device's power and network, then retry",
    ),
    (
        r"connection refused|no route to host|timed out|could not resolve|name or service not known"
        r"|network is unreachable",
        "unreachable",
        "check that the device is on, that sshd runs on it, and the host and port in the URL",
    ),
)


def _classify(stderr: str) -> tuple[str, str]:
    lowered = stderr.lower()
    for pattern, reason, fix in _SSH_FAULTS:
        if re.search(pattern, lowered):
            return reason, fix
    return "connection-lost", "run the same ssh command by hand with -v to see why it failed"


class SshDevice(ShellDevice):
    """``ssh://user@host[:port]``. Uses the user's ssh config and keys unless told otherwise."""

    transport = "ssh"

    def __init__(
        self,
        host: str,
        *,
        user: str | None = None,
        port: int | None = None,
        identity_file: str | None = None,
        known_hosts_file: str | None = None,
        strict_host_key_checking: str = "accept-new",
        ssh_config: str | None = None,
        ssh_options: Sequence[str] = (),
        temp_root: str | None = None,
        connect_timeout: float = 10.0,
        server_alive_interval: float = 5.0,
        transfer_timeout: float = 600.0,
        ssh_path: str | None = None,
    ) -> None:
        if not _HOST.fullmatch(host):
            raise DeviceError("bad-spec", f"Expected a host name or address, but got {host!r}")
        if user is not None and not _USER.fullmatch(user):
            raise DeviceError("bad-spec", f"Expected a plain user name, but got {user!r}")
        if port is not None and not 0 < port < 65536:
            raise DeviceError("bad-spec", f"Expected a port in 1..65535, but got {port}")
        if strict_host_key_checking not in STRICT_HOST_KEY_CHOICES:
            raise DeviceError(
                "bad-spec",
                f"Expected `strict_host_key_checking` to be one of {STRICT_HOST_KEY_CHOICES}, "
                f"but got {strict_host_key_checking!r}",
            )
        for option in ssh_options:
            if "=" not in option or option.startswith("-"):
                raise DeviceError(
                    "bad-spec", f"Expected ssh options as Key=Value (as for -o), but got {option!r}"
                )
        self.host, self.user, self.port = host, user, port
        self.identity_file = identity_file
        self.known_hosts_file = known_hosts_file
        self.strict_host_key_checking = strict_host_key_checking
        self.ssh_config = ssh_config
        self.ssh_options = tuple(ssh_options)
        self.temp_root = temp_root
        self.connect_timeout = connect_timeout
        self.server_alive_interval = server_alive_interval
        self.transfer_timeout = transfer_timeout
        self.ssh_path = ssh_path or os.environ.get("BNN_EXPORT_SSH") or "ssh"

    def describe(self) -> str:
        who = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"ssh://{who}{host}{port}"

    def ssh_argv(self) -> list[str]:
        """The ssh client command line up to and including the destination."""
        executable = shutil.which(self.ssh_path)
        if executable is None:
            raise DeviceError(
                "tool-missing",
                f"The ssh client {self.ssh_path!r} was not found. Install OpenSSH "
                "(Debian/Ubuntu: apt-get install openssh-client) or set BNN_EXPORT_SSH.",
            )
        argv = [executable, "-T", "-x", "-a"]
        if self.ssh_config is not None:
            argv += ["-F", self.ssh_config]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.identity_file is not None:
            argv += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        options = [
            "BatchMode=yes",
            f"ConnectTimeout={max(1, round(self.connect_timeout))}",
            f"ServerAliveInterval={max(1, round(self.server_alive_interval))}",
            "ServerAliveCountMax=3",
            f"StrictHostKeyChecking={self.strict_host_key_checking}",
            "LogLevel=ERROR",
        ]
        if self.known_hosts_file is not None:
            options.append(f"UserKnownHostsFile={self.known_hosts_file}")
        # ssh keeps the first value it sees for an option: the user's -o come first to win.
        for option in [*self.ssh_options, *options]:
            argv += ["-o", option]
        destination = f"{self.user}@{self.host}" if self.user else self.host
        return [*argv, "--", destination]

    def shell(
        self,
        script: str,
        *,
        timeout: float,
        stdin_path: str | None = None,
        stdout_path: str | None = None,
    ) -> CompletedRun:
        argv = [*self.ssh_argv(), script]
        try:
            result = run_process(
                argv, timeout=timeout, stdin_path=stdin_path, stdout_path=stdout_path
            )
        except subprocess.TimeoutExpired:
            raise DeviceError(
                "timeout",
                f"ssh to {self.describe()} did not finish within {timeout:g} s and was killed; "
                "the link may be hanging. Check the device, or raise the timeout.",
            ) from None
        if result.returncode == _SSH_FAILURE:
            reason, fix = _classify(result.stderr)
            # ssh's last lines say what failed; the banners above them (host key) do not.
            said = " ".join(result.stderr.replace("\r", "").strip().splitlines()[-2:])
            if not said:
                # With LogLevel=ERROR, ssh leaves silently when keepalives go unanswered.
                reason, fix = (
                    "connection-lost",
                    (
                        "the device stopped answering keepalives (ServerAliveInterval="
                        f"{max(1, round(self.server_alive_interval))} s, 3 misses) or the link "
                        "dropped: check the device's power and network, then retry"
                    ),
                )
                said = "(ssh printed nothing)"
            raise DeviceError(reason, f"ssh to {self.describe()} failed: {said!r}; {fix}.")
        return result

    def make_temp_dir(self) -> str:
        if self.temp_root is None:
            template = '"${TMPDIR:-/tmp}"/bnn-export-XXXXXX'
        else:
            template = f"{shlex.quote(self.temp_root)}/bnn-export-XXXXXX"
        result = self.shell(f"mktemp -d {template}", timeout=60)
        path = result.stdout.strip()
        if result.returncode != 0 or not path.startswith("/"):
            raise_transfer_error(self.describe(), "create a temp dir", result)
        return path

    def push(self, local: str, remote: str) -> None:
        if not Path(local).is_file():
            raise FileNotFoundError(f"Cannot push {local!r}: no such local file")
        result = self.shell(
            f"cat > {shlex.quote(remote)}", timeout=self.transfer_timeout, stdin_path=local
        )
        if result.returncode != 0:
            raise_transfer_error(self.describe(), f"copy {local!r} to {remote!r}", result)

    def pull(self, remote: str, local: str) -> None:
        partial = f"{local}.partial"
        try:
            result = self.shell(
                f"cat -- {shlex.quote(remote)}",
                timeout=self.transfer_timeout,
                stdout_path=partial,
            )
            if result.returncode != 0:
                raise_transfer_error(self.describe(), f"copy {remote!r} to {local!r}", result)
            os.replace(partial, local)
        finally:
            Path(partial).unlink(missing_ok=True)


def raise_transfer_error(device: str, what: str, result: CompletedRun) -> None:
    """Raise the DeviceError for a failed file operation, spotting a full disk."""
    err = result.stderr.strip()
    if "no space left on device" in err.lower() or "disk quota exceeded" in err.lower():
        raise DeviceError(
            "disk-full",
            f"Could not {what} on {device}: the device is out of disk space ({err!r}). "
            "Free some space on it or choose another temp dir (--remote-tmp).",
        )
    raise DeviceError("command-failed", f"Could not {what} on {device}: {err!r}")
