"""sealbeam key broker: the relying party that verifies attestation and releases keys.

Never imports Beam, ``transforms`` or ``pipelines``. Import submodules directly; this
package stays light so that ``enclave_workers`` can use the client without the service.
"""
