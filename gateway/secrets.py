# SPDX-License-Identifier: Apache-2.0
"""Secret files (the broker password, the TLS client key): refused when missing or exposed.

A secret file must be a regular file that only its owner may read or write (mode 0600 or
0400): group or others having any permission (``mode & 0o077``) is refused with a
`SecretFileError` naming the file, its mode and the fix (``chmod 600 FILE``). The rule and
the message are those of the station's signing key (`gateway.keys`). Public material — the
CA bundle and the client certificate — is not checked here. No message ever holds the
secret itself.
"""

import os
import stat
from pathlib import Path

from gateway.errors import GatewayError

#: Permission bits that expose a secret: any of group's or others'.
EXPOSED_BITS = stat.S_IRWXG | stat.S_IRWXO


class SecretFileError(GatewayError):
    """A secret file is missing, not a regular file, unreadable or exposed."""


def exposure_problem(path: Path, mode: int, what: str) -> str | None:
    """Say what is wrong with a secret file of `mode` (from ``stat``), or None when fine."""
    if not stat.S_ISREG(mode):
        return f"{what} {path} is not a regular file"
    if mode & EXPOSED_BITS:
        return (
            f"{what} {path} has mode {stat.S_IMODE(mode):04o}; it must be readable and "
            f"writable by its owner only (chmod 600 {path})"
        )
    return None


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret file that is missing, not a regular file, or exposed.

    Args:
        path: the file, as the daemon will open it.
        what: what it holds, for the message (``"password file"``, ``"TLS client key"``).

    Raises:
        SecretFileError: naming the file, its mode and the fix.
    """
    try:
        mode = path.stat().st_mode  # follows a symlink: the target's mode is what counts
    except OSError as exc:
        raise SecretFileError(f"cannot read the {what} {path}: {exc.strerror}") from exc
    if (problem := exposure_problem(path, mode, what)) is not None:
        raise SecretFileError(problem)


def read_secret(path: Path, what: str = "password file") -> str:
    """Check a one-line secret file (see `check_private_file`) and return its first line.

    The mode is checked on the opened file, so the file read is the file checked.

    Raises:
        SecretFileError: the file is missing, unreadable, exposed, not UTF-8 or empty.
    """
    check_private_file(path, what)  # by stat first: opening a FIFO would block
    try:
        with path.open("rb") as file:
            problem = exposure_problem(path, os.fstat(file.fileno()).st_mode, what)
            if problem is not None:
                raise SecretFileError(problem)
            content = file.read()
    except OSError as exc:
        raise SecretFileError(f"cannot read the {what} {path}: {exc.strerror}") from exc
    try:
        lines = content.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise SecretFileError(f"the {what} {path} is not UTF-8 text") from exc
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise SecretFileError(f"the {what} {path} is empty")
    return secret
