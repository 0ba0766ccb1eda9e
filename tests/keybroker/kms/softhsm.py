"""SoftHSM2 for tests: find the module, and initialise tokens in a temporary directory.

``find_softhsm_module`` looks where Debian's ``softhsm2`` / ``libsofthsm2`` packages put the
module (asking ``dpkg -L`` first, then well-known paths). ``create_softhsm`` writes a
``softhsm2.conf`` whose token directory is inside the given directory and runs
``softhsm2-util --init-token --free`` once per token. SoftHSM reads ``SOFTHSM2_CONF`` when
the module is initialised, so ``activate`` sets it and re-initialises the module if this
process loaded it before. Nothing here touches the system-wide token directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MODULE_NAME = "libsofthsm2.so"
WELL_KNOWN_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


@dataclass(frozen=True)
class TokenSpec:
    label: str
    user_pin: str
    so_pin: str


@dataclass(frozen=True)
class SoftHsm:
    module: Path
    conf: Path
    token_dir: Path
    tokens: Mapping[str, TokenSpec]


def _dpkg_module_paths() -> list[str]:
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        return []
    found = []
    for package in ("libsofthsm2", "softhsm2"):
        listing = subprocess.run(
            [dpkg, "-L", package], capture_output=True, text=True, check=False, timeout=30
        )
        if listing.returncode == 0:
            found.extend(
                line.strip() for line in listing.stdout.splitlines()
                if line.strip().endswith("/" + MODULE_NAME)
            )
    return found


def find_softhsm_module() -> Path | None:
    """The SoftHSM2 PKCS#11 module on this machine, or None when it is not installed."""
    for candidate in (*_dpkg_module_paths(), *WELL_KNOWN_MODULE_PATHS):
        path = Path(candidate)
        if path.is_file():
            return path.resolve()
    return None


def create_softhsm(directory: Path, module: Path, tokens: list[TokenSpec]) -> SoftHsm:
    """Write a private SoftHSM configuration under ``directory`` and initialise ``tokens``."""
    util = shutil.which("softhsm2-util")
    if util is None:
        raise RuntimeError("softhsm2-util is not on PATH although the SoftHSM module is")
    token_dir = directory / "tokens"
    token_dir.mkdir(parents=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    for token in tokens:
        subprocess.run(
            [util, "--init-token", "--free", "--label", token.label,
             "--pin", token.user_pin, "--so-pin", token.so_pin],
            env=env, check=True, capture_output=True, timeout=60,
        )
    return SoftHsm(module, conf, token_dir, {token.label: token for token in tokens})


@contextmanager
def activate(softhsm: SoftHsm) -> Iterator[None]:
    """Point SoftHSM at ``softhsm.conf`` for the duration; restores the environment after."""
    import pkcs11

    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(softhsm.conf)
    try:
        pkcs11.lib(str(softhsm.module)).reinitialize()  # C_Initialize reads SOFTHSM2_CONF
        yield
    finally:
        pkcs11.lib(str(softhsm.module)).finalize()
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
