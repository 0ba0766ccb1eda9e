"""A real key broker on loopback for the worker, transform and pipeline tests.

``broker_env`` uses ``tests.support.broker.start_broker`` (``init_state`` + ``serve_in_thread``)
with two tenants; its policy is narrowed to the producers ``acme`` and ``globex`` so that a
third producer (``mallory``, whose keys the keyring can still wrap) is denied by the broker.
It also offers helpers that seal records as a partner would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from enclave_workers.records import INPUT_SCHEMA_FINGERPRINT
from envelope import DataKey, WrappedKey, dek_wrap_aad, seal_record
from keybroker.client import BrokerClient
from keybroker.config import BrokerSettings
from keybroker.kms.local import LocalKeyring
from keybroker.service_limits import ServiceLimits
from tests.support.broker import start_broker

ALLOWED_PRODUCERS = ("acme", "globex")
DENIED_PRODUCER = "mallory"
REGIONS = ("eu", "us")


@dataclass(frozen=True)
class BrokerEnv:
    state_dir: Path
    settings: BrokerSettings
    url: str
    keyring: LocalKeyring

    @property
    def dev_tee_dir(self) -> Path:
        return self.state_dir / "dev-tee"

    def client(self) -> BrokerClient:
        return BrokerClient(self.url)

    def provider(self) -> SimulatedSnpProvider:
        return SimulatedSnpProvider(self.dev_tee_dir)

    def wrap_new_key(self, region: str, producer_id: str) -> tuple[DataKey, WrappedKey]:
        """A fresh DEK wrapped under the region's KEK, as a partner makes one."""
        data_key = DataKey.generate()
        wrapped = self.keyring.wrap(self.keyring.kek_for_region(region),
                                    data_key.secret_bytes(), dek_wrap_aad(region, producer_id))
        return data_key, wrapped


def _only_allowed_producers(document: dict[str, Any]) -> None:
    for rule in document["rules"]:
        rule["producers"] = list(ALLOWED_PRODUCERS)


# One broker serves a whole folder's tests from one loopback address: the per-address
# limit on challenges and attestations (tested in tests/keybroker) would throttle the suite
# itself once sessions are quick to make.
TEST_LIMITS = ServiceLimits(rate_per_second=1_000, rate_burst=10_000)


@contextmanager
def broker_env(directory: Path) -> Iterator[BrokerEnv]:
    state_dir = directory / "state"
    with start_broker(state_dir, regions=REGIONS, tenants=(*ALLOWED_PRODUCERS, DENIED_PRODUCER),
                      policy_edit=_only_allowed_producers,
                      settings_changes={"limits": TEST_LIMITS}) as broker:
        settings = broker.settings
        yield BrokerEnv(state_dir, settings, broker.url, LocalKeyring.open(settings.keyring_path))


def person(index: int, region: str) -> dict[str, object]:
    """A synthetic partner record with identifiers that must never leave the TEE."""
    return {
        "customer_id": f"cust-secret-{index:05d}",
        "name": f"Zebulon Quillfeather{index:05d}",
        "email": f"zebulon.q{index:05d}@private.example",
        "amount": 100.0 + index,
        "event_time": "2025-03-04T05:06:07Z",
        "region": region,
    }


def seal_json(record: Mapping[str, object] | bytes, data_key: DataKey, wrapped: WrappedKey,
              region: str, producer_id: str) -> bytes:
    plaintext = record if isinstance(record, bytes) else json.dumps(record).encode()
    return seal_record(plaintext, data_key=data_key, wrapped_key=wrapped, region=region,
                       producer_id=producer_id, schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                       context={"sealbeam.kind": "partner-records"})
