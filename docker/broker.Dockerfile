# The key broker (`sealbeam broker serve`): the relying party, next to the KMS.
#
# The state directory (broker.yaml, policy.yaml, keyring or KMS credentials, ledger.sqlite)
# is mounted at /state from an encrypted volume; TLS is terminated in front of it.
#
#   docker build -f docker/broker.Dockerfile -t sealbeam-broker .
#   docker run --rm -p 8787:8787 -v /srv/sealbeam:/state sealbeam-broker
# Pin the base by the digest you reviewed (FROM python:3.11-slim@sha256:...).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY setup.py README.md ./
COPY envelope/ envelope/
COPY keybroker/ keybroker/
COPY enclave_workers/ enclave_workers/
COPY transforms/ transforms/
COPY pipelines/ pipelines/
# The package as setup.py declares it (the CLI lives in pipelines/). Once setup.py has a
# `broker` extra with a slim base, install ".[broker]" instead.
RUN pip install . && rm -rf /src

RUN useradd --system --uid 10002 broker
USER broker
WORKDIR /state
EXPOSE 8787
ENTRYPOINT ["sealbeam", "broker", "serve", "--state", "/state", "--host", "0.0.0.0", "--port", "8787"]
