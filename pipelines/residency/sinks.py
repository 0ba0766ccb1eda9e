"""Sink URLs of a residency map: parse them, turn them into Beam paths, find shared roots.

What it does: ``SinkUrl.parse`` accepts ``file:///abs/path``, ``gs://bucket/prefix``,
``azfs://account/container/prefix`` (Beam's Azure Blob scheme) and
``abfs://container@account.dfs.core.windows.net/prefix`` (the ADLS Gen2 form of the same blob
store, written through Beam's ``azfs`` filesystem); ``beam_path`` is where Beam writes;
``store`` names the bucket or storage account whose location preflight reads;
``overlaps`` says whether one sink's objects could be listed under another's root.

What it does not: no I/O; whether the bucket exists and where it is is ``pipelines.preflight``.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

__all__ = ["AZURE", "FILE", "GCS", "SinkUrl", "SinkUrlError"]

FILE = "file"
GCS = "gs"
AZURE = "azure"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$")
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER = re.compile(r"^(?:\$root|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$")
_ABFS_HOST = re.compile(r"^([^@/]+)@([a-z0-9]{3,24})\.dfs\.core\.windows\.net$")


class SinkUrlError(ValueError):
    """A sink URL that names no usable location (the message says which part)."""


@dataclass(frozen=True)
class SinkUrl:
    """One sink: its kind (file, gs, azure), the bucket/account, container and prefix."""

    url: str
    kind: str
    store: str
    """GCS bucket, Azure storage account, or '' for a local directory."""
    container: str
    """Azure container; '' otherwise."""
    prefix: tuple[str, ...]

    @classmethod
    def parse(cls, url: str) -> SinkUrl:
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise SinkUrlError(f"{url!r}: expected file://, gs://, azfs:// or abfs://")
        if scheme == "file":
            if not rest.startswith("/"):
                raise SinkUrlError(f"{url!r}: a file:// sink needs an absolute path")
            return cls(url, FILE, "", "", _parts(rest, url))
        if scheme == "gs":
            bucket, _, path = rest.partition("/")
            if not _BUCKET.match(bucket):
                raise SinkUrlError(f"{url!r}: {bucket!r} is not a GCS bucket name")
            return cls(url, GCS, bucket, "", _parts(path, url))
        if scheme == "azfs":
            account, _, path = rest.partition("/")
            container, _, path = path.partition("/")
            return cls._azure(url, account, container, path)
        if scheme == "abfs":
            host, _, path = rest.partition("/")
            match = _ABFS_HOST.match(host)
            if match is None:
                raise SinkUrlError(f"{url!r}: expected abfs://CONTAINER@ACCOUNT.dfs.core."
                                   "windows.net/PREFIX")
            return cls._azure(url, match.group(2), match.group(1), path)
        raise SinkUrlError(f"{url!r}: scheme {scheme!r} is not file, gs, azfs or abfs")

    @classmethod
    def _azure(cls, url: str, account: str, container: str, path: str) -> SinkUrl:
        if not _ACCOUNT.match(account):
            raise SinkUrlError(f"{url!r}: {account!r} is not a storage account name")
        if not _CONTAINER.match(container):
            raise SinkUrlError(f"{url!r}: {container!r} is not a container name")
        return cls(url, AZURE, account, container, _parts(path, url))

    @property
    def beam_path(self) -> str:
        """The root Beam's FileSystems writes under (no trailing slash)."""
        tail = "/".join(self.prefix)
        if self.kind == FILE:
            return "/" + tail
        if self.kind == GCS:
            return f"gs://{self.store}/{tail}".rstrip("/")
        return f"azfs://{self.store}/{self.container}/{tail}".rstrip("/")

    @property
    def store_label(self) -> str:
        """What preflight names: ``gs://bucket``, ``azfs://account`` or the directory."""
        if self.kind == GCS:
            return f"gs://{self.store}"
        if self.kind == AZURE:
            return f"azfs://{self.store}"
        return self.beam_path

    def _root(self) -> tuple[str, ...]:
        if self.kind == AZURE:
            return (self.kind, self.store, self.container, *self.prefix)
        return (self.kind, self.store, *self.prefix)

    def overlaps(self, other: SinkUrl) -> bool:
        """Is one of the two roots inside (or equal to) the other?"""
        mine, theirs = self._root(), other._root()
        shorter = min(len(mine), len(theirs))
        return mine[:shorter] == theirs[:shorter]

    def same_store(self, other: SinkUrl) -> bool:
        """Do both sit in one bucket or storage account (local sinks: overlapping paths)?"""
        if self.kind == FILE or other.kind == FILE:
            return self.overlaps(other)
        return (self.kind, self.store) == (other.kind, other.store)


def _parts(path: str, url: str) -> tuple[str, ...]:
    parts = tuple(part for part in path.split("/") if part)
    if any(part in (".", "..") for part in parts):
        raise SinkUrlError(f"{url!r}: '.' and '..' are not allowed in a sink path")
    normalized = posixpath.normpath("/" + "/".join(parts))
    return tuple(part for part in normalized.split("/") if part)
