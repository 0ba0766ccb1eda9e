# The attested pool worker (`sealbeam worker serve`): only what runs in the TEE.
#
# It installs the pool's import closure and nothing else: envelope, enclave_workers, and of
# keybroker only the broker *client* and the evidence formats (keybroker/attestation), which
# import nothing else of keybroker. No Beam, no FastAPI, no KMS SDKs
# (tests/pool/test_import_boundary.py checks the closure). On Confidential Space the image
# digest is the measurement: put it in the policy (docs/OPERATIONS.md, section 3a).
#
#   docker build -f docker/pool-worker.Dockerfile -t sealbeam-pool .
#   docker run --rm -p 8700:8700 sealbeam-pool --broker_url https://broker:8443 \
#       --tee configfs-tsm --host 0.0.0.0 --port 8700
# Pin the base by the digest you reviewed (FROM python:3.11-slim@sha256:...): a new base
# is a new image digest, so a new measurement in the policy.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN pip install "cryptography>=47" "pyarrow>=15" "httpx>=0.27" "pyyaml>=6" "jsonschema>=4" \
        "google-crc32c>=1.5"

WORKDIR /app
COPY envelope/ envelope/
COPY enclave_workers/ enclave_workers/
COPY keybroker/__init__.py keybroker/client.py keybroker/
COPY keybroker/attestation/ keybroker/attestation/
ENV PYTHONPATH=/app

RUN useradd --system --uid 10001 pool
USER pool
EXPOSE 8700
ENTRYPOINT ["python", "-m", "enclave_workers.pool"]
CMD ["--help"]
