"""Packaging for sealbeam; also usable as Dataflow's ``--setup_file``."""

from pathlib import Path

from setuptools import find_packages, setup

ROOMS = ("envelope", "keybroker", "enclave_workers", "transforms", "pipelines")

# Extras per role. Others add their role's packages to the matching list; `test` is rebuilt
# below from every role, so `pip install -e '.[test]'` still installs all the tests need.
EXTRAS = {
    # Beam workers and the pipelines (`sealbeam run`, `seal`, `open`, `demo`) on the local
    # runners.
    "worker": ["apache-beam>=2.60"],
    # The key broker service (`sealbeam broker serve`).
    # uvloop and httptools: uvicorn's faster event loop and HTTP parser (docs/OPERATIONS.md).
    "broker": ["fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.20",
               "uvloop>=0.19; sys_platform != 'win32'", "httptools>=0.6"],
    # Google Cloud: Cloud KMS backend (CRC32C integrity fields) and Dataflow.
    # Google Cloud: Cloud KMS backend (CRC32C integrity fields), sinks on Cloud Storage (Beam's
    # gcsio) and preflight of their buckets.
    "gcp": ["google-cloud-kms>=3", "google-crc32c>=1.5", "google-cloud-storage>=2.18.2,<4"],
    "dataflow": ["apache-beam[gcp]>=2.60"],
    # Azure Key Vault / Managed HSM backend and Secure Key Release.
    # Sinks on Azure Blob Storage (Beam's azfs) and preflight through the management APIs
    # (storage accounts; Key Vault vaults and managed HSMs of azure-kv:// KEKs).
    "azure": ["azure-keyvault-keys>=4.9", "azure-identity>=1.15",
              "azure-storage-blob>=12.3.2,<13", "azure-mgmt-storage>=21",
              "azure-mgmt-keyvault>=10"],
    # PKCS#11 HSM backend.
    "pkcs11": ["python-pkcs11>=0.7"],
    # A ledger shared by several broker replicas (PostgreSQL).
    "postgres": ["psycopg[binary]>=3.1"],
    # Pub/Sub streaming source and ``sealbeam feed`` (tests use the real emulator).
    "pubsub": ["apache-beam[gcp]>=2.60", "google-cloud-pubsub>=2.20"],
}
EXTRAS["test"] = sorted({requirement for role in EXTRAS.values() for requirement in role} | {
    "pytest>=8",
    "hypothesis>=6.100",
    "ruff>=0.5",
    "schemathesis>=4.0",  # the broker API fuzzed from its OpenAPI document
    "gcp-storage-emulator>=2024.1",  # GCS sinks tested on the emulator (Azurite is npm)
    # custody statements parse with maintained in-toto / DSSE libraries
    "in-toto-attestation>=0.9",
    "securesystemslib>=1.0",
    "pyjwt>=2.8",  # tests mint and check JWTs; the code verifies them with cryptography
})

setup(
    name="sealbeam",
    version="0.1.0",
    description="Streaming encrypted data pipelines on Apache Beam with attested key release",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[f"{room}*" for room in ROOMS]),
    package_data={
        "keybroker": ["*.yaml", "*.json"],
        "keybroker.service": ["static/*.html", "static/*.js"],
        "enclave_workers": ["*.json", "*.yaml"],
        "enclave_workers.features": ["schema.json"],
        "pipelines.residency": ["schema.json"],
    },
    # What every role imports: the sealed formats, the TEE side, the broker client, the CLI.
    install_requires=[
        # Bounded below the next major: AMD's serial-0 VCEKs load only with a deprecation
        # warning that a future release turns into an error
        # (tests/attestation/test_serial_zero_vcek.py fails that day).
        "cryptography>=47,<51",
        "pyarrow>=15",
        "numpy>=1.26",
        "httpx>=0.27",
        "pyyaml>=6",
        "jsonschema>=4",
        "tqdm>=4.66",
    ],
    # One extra per role; `pip install -e '.[test]'` installs every role (the tests cover all).
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["sealbeam=pipelines.cli:main"]},
)
