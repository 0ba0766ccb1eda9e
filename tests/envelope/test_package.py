"""The envelope package's shape: its public surface and what it may import."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import envelope

PACKAGE = Path(envelope.__file__).resolve().parent
CONTRACT_NAMES = {
    "EnvelopeError", "EnvelopeFormatError", "EnvelopeLimitError", "EnvelopeAuthenticationError",
    "KeyTransportError", "KeyReference", "WrappedKey", "DataKey", "dek_wrap_aad",
    "EnvelopeHeader", "read_header", "seal_record", "open_record", "seal_batch", "open_batch",
    "iter_open_batch", "BatchSealer", "TEE_KEY_ALGORITHM", "TeeKeyPair", "seal_to_tee",
    "report_data_binding", "release_info", "rewrap_envelope",
    # record profile 2 (FORMAT.md section 13), the API the pipeline is wired against
    "KIND_RECORD_STREAM", "seal_record_stream", "open_record_stream", "read_record_stream",
    "extract_stream_record", "open_stream_record", "read_stream_record", "StreamRecord",
    "StreamRecordFailure", "OpenedRecordStream", "RecordStreamLayout",
}


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imports_only_stdlib_cryptography_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | {"cryptography", "envelope"}
    for path in sorted(PACKAGE.glob("*.py")):
        foreign = _top_level_imports(path) - allowed
        assert not foreign, f"{path.name} imports {sorted(foreign)}"


def test_contract_names_are_exported() -> None:
    assert set(envelope.__all__) >= CONTRACT_NAMES
    for name in envelope.__all__:
        assert hasattr(envelope, name), name


def test_every_module_has_a_docstring_and_future_annotations() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        assert ast.get_docstring(tree), path.name
        assert "from __future__ import annotations" in source, path.name


def test_error_hierarchy() -> None:
    assert issubclass(envelope.EnvelopeLimitError, envelope.EnvelopeFormatError)
    for error in (envelope.EnvelopeFormatError, envelope.EnvelopeAuthenticationError,
                  envelope.KeyTransportError):
        assert issubclass(error, envelope.EnvelopeError)
