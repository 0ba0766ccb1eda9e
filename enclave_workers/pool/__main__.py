"""``python -m enclave_workers.pool``: the pool worker's serve command (``cli.main``)."""

import sys

from enclave_workers.pool.cli import main

sys.exit(main())
