"""Packaging for sealbeam; also usable as Dataflow's ``--setup_file``."""

from pathlib import Path

from setuptools import find_packages, setup

ROOMS = ("envelope", "keybroker", "enclave_workers", "transforms", "pipelines")

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
        "enclave_workers": ["*.json", "*.yaml"],
        "enclave_workers.features": ["schema.json"],
        "pipelines.residency": ["schema.json"],
    },
    install_requires=[
        "apache-beam>=2.60",
        "cryptography>=47",
        "pyarrow>=15",
        "google-cloud-kms>=3",
        "azure-keyvault-keys>=4.9",
        "azure-identity>=1.15",
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "httpx>=0.27",
        "pyyaml>=6",
        "jsonschema>=4",
        "python-pkcs11>=0.7",
        "google-crc32c>=1.5",
        "pyjwt>=2.8",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100", "ruff>=0.5",
                 # residency sinks: the stores' SDKs and the GCS emulator (Azurite is npm)
                 "google-cloud-storage>=2.18.2,<4", "azure-storage-blob>=12.3.2,<13",
                 "azure-mgmt-storage>=21", "gcp-storage-emulator>=2024.1"],
        # sinks on Google Cloud Storage (Beam's gcsio) and preflight of their buckets
        "gcp": ["google-cloud-storage>=2.18.2,<4"],
        # sinks on Azure Blob Storage (Beam's azfs) and preflight through the management API
        "azure": ["azure-storage-blob>=12.3.2,<13", "azure-mgmt-storage>=21"],
    },
    entry_points={"console_scripts": ["sealbeam=pipelines.cli:main"]},
)
