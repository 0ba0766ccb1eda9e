"""The enclave worker as a service: an attested pool that Beam workers send sealed batches to.

``channel`` (the request keys and frame sealing both sides share), ``wire`` (frames of a
request and a response; ``routes``: each envelope's routing facts in them; ``errors``: the
one ``WireError``), ``worker`` (key session, feature spec and channel key of one pool
worker), ``server`` (HTTP on the standard library: ``sealbeam worker serve``).

Nothing here imports the broker's KMS backends, its web framework or Beam
(``tests/pool/test_import_boundary.py``), so a pool image installs only the ``[worker]`` set.
"""
