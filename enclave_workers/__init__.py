"""Code that runs inside the TEE: evidence, the key session, batch processing.

Never imports Beam, ``transforms`` or ``pipelines``, so the same code serves a Beam DoFn,
a remote worker pool, or a test.
"""
