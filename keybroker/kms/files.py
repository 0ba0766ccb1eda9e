"""Reading and writing files that hold key material: private, bounded, replaced atomically.

Writes go to a temporary file created 0600 beside the target, are fsynced and renamed over
it, so a crash leaves the old file or the new one, never half of either. Reads refuse
symlinks, non-regular files, files readable or writable by group/other, and files over a
size bound, before reading a byte. Nothing here parses the content.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from keybroker.kms.base import InsecureKeyringError, KeyNotFoundError, KeyringFormatError

__all__ = ["read_private_file", "write_private_file"]


def write_private_file(path: Path, content: bytes) -> None:
    """Atomically replace ``path`` with ``content``, mode 0600."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    _fsync_directory(path.parent)


def read_private_file(path: Path, max_bytes: int) -> bytes:
    """Read a private file, refusing loose permissions and anything over ``max_bytes``."""
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as error:
        raise KeyNotFoundError(f"key file {path} does not exist") from error
    except OSError as error:
        raise InsecureKeyringError(
            f"cannot open key file {path} safely: {error.strerror}"
        ) from error
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise InsecureKeyringError(f"key file {path} is not a regular file")
        loose_bits = stat.S_IMODE(status.st_mode) & 0o077
        if loose_bits:
            raise InsecureKeyringError(
                f"key file {path} has mode {stat.S_IMODE(status.st_mode):04o}; it must not be "
                "readable or writable by group or other (chmod 600)"
            )
        if status.st_size > max_bytes:
            raise KeyringFormatError(
                f"key file {path} is {status.st_size} bytes, over the limit of {max_bytes}"
            )
        content = handle.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise KeyringFormatError(f"key file {path} grew past the limit of {max_bytes} bytes")
    return content


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; best effort on filesystems that cannot fsync a directory."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
