"""Checks a run makes before it builds a pipeline: is the broker there, is the TEE there?

What it does: ``check_broker(url)`` asks the broker's ``GET /v1/health`` once (through the same
``BrokerClient`` the workers use) and turns a refused connection, a timeout or a bad status
into one ``PreflightError`` line naming the URL; ``check_tee(settings, local=...)`` checks,
when the workers run on this machine (a local runner), that the chosen TEE's interface exists:
the configfs-tsm report directory, ``/dev/sev-guest``, or the simulated TEE's dev chain
directory. Without these checks such a mistake surfaces only inside a Beam worker, as a long
traceback after the pipeline has started.

What it does not: it does not attest or fetch keys (the workers do, in the TEE), and for
remote runners (Dataflow) it does not check the TEE, which lives on the workers, not here.
"""

from __future__ import annotations

from pathlib import Path

from enclave_workers.evidence.configfs_tsm import DEFAULT_TSM_ROOT
from enclave_workers.evidence.sev_guest import DEFAULT_DEVICE
from keybroker.client import BrokerClient, BrokerError
from transforms.tee import (
    CONFIGFS_TSM,
    CONFIGFS_TSM_TDX,
    SEV_GUEST,
    SIMULATED_SEV_SNP,
    TeeSettings,
)

from .errors import PipelineError

__all__ = ["LOCAL_RUNNERS", "PreflightError", "check_broker", "check_tee", "is_local_runner"]

HEALTH_TIMEOUT_SECONDS = 5.0
LOCAL_RUNNERS = frozenset({"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner",
                           "SwitchingDirectRunner", "PrismRunner"})


class PreflightError(PipelineError):
    """The broker or the TEE a run needs is not there; nothing was started."""


def is_local_runner(runner: object) -> bool:
    """True when the workers run in this process or on this machine."""
    if runner is None:
        return True
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name in LOCAL_RUNNERS


def check_broker(url: str, *, timeout: float = HEALTH_TIMEOUT_SECONDS) -> dict:
    """The broker's health document; ``PreflightError`` when it does not answer healthy."""
    try:
        client = BrokerClient(url, timeout=timeout)
    except (ValueError, BrokerError) as exc:
        raise PreflightError(f"--broker_url {url!r} is not usable: {exc}") from None
    try:
        health = dict(client.health())
    except BrokerError as exc:
        raise PreflightError(f"the key broker at {url} did not answer /v1/health "
                             f"({type(exc).__name__}: {_first_line(exc)}); start it with "
                             "`sealbeam broker serve` or fix --broker_url") from None
    finally:
        _close(client)
    if health.get("status") not in (None, "ok"):
        raise PreflightError(f"the key broker at {url} reports status {health.get('status')!r}")
    return health


def check_tee(settings: TeeSettings, *, local: bool) -> None:
    """For local runs, that the interface of ``settings.tee`` exists on this machine."""
    if not local:
        return
    if settings.tee == SIMULATED_SEV_SNP:
        chain = Path(str(settings.dev_tee_dir))
        if not chain.is_dir():
            raise PreflightError(f"--dev_tee_dir {chain} does not exist (run `sealbeam keys "
                                 "init` and pass STATE/dev-tee)")
        return
    if settings.tee in (CONFIGFS_TSM, CONFIGFS_TSM_TDX):
        if not Path(DEFAULT_TSM_ROOT).is_dir():
            raise PreflightError(
                f"--tee {settings.tee}: {DEFAULT_TSM_ROOT} does not exist on this machine "
                "(not a confidential VM, a kernel without configfs-tsm, or configfs not "
                "mounted); use --tee simulated-sev-snp for a local run")
        return
    if settings.tee == SEV_GUEST and not Path(DEFAULT_DEVICE).exists():
        raise PreflightError(f"--tee {SEV_GUEST}: {DEFAULT_DEVICE} does not exist on this "
                             "machine (not an SEV-SNP guest); use --tee simulated-sev-snp "
                             "for a local run")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _close(client: BrokerClient) -> None:
    close = getattr(client, "close", None)
    if callable(close):
        close()
