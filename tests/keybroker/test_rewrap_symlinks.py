"""``keys rewrap`` of a folder never follows a symbolic link out of it (nor into another file).

A link planted in the data folder, to a sealed file elsewhere or to a directory elsewhere,
is reported as skipped and the target is left byte for byte as it was.
"""

from __future__ import annotations

from pathlib import Path

from keybroker.rewrap import rewrap_paths
from tests.keybroker.rewrap_support import EU_KEK, kek_versions, new_keyring, write_record_file


def test_links_out_of_the_folder_are_not_followed(tmp_path: Path) -> None:
    keyring = new_keyring(tmp_path)
    root = tmp_path / "data"
    inside = root / "records.sealed"
    write_record_file(inside, keyring, records=2)
    outside_dir = tmp_path / "elsewhere"
    outside = outside_dir / "victim.sealed"
    write_record_file(outside, keyring, records=2)
    (root / "link-to-file.sealed").symlink_to(outside)
    (root / "link-to-dir").symlink_to(outside_dir, target_is_directory=True)
    (root / "sub").mkdir()
    relative = Path("..") / ".." / "elsewhere" / "victim.sealed"
    (root / "sub" / "relative-link.sealed").symlink_to(relative)
    outside_before = outside.read_bytes()
    assert keyring.rotate(EU_KEK).version == "2"

    report = rewrap_paths([root], kms=keyring, kek_uri=EU_KEK,
                          journal_path=tmp_path / "journal.jsonl")

    assert report.files_changed == [str(inside.resolve())]
    assert set(kek_versions(inside)) == {"2"}
    assert outside.read_bytes() == outside_before  # untouched
    skipped = {Path(entry["path"]).name: entry["reason"] for entry in report.files_skipped}
    assert skipped["link-to-file.sealed"] == "a symbolic link: not followed"
    assert skipped["link-to-dir"] == "a symbolic link: not followed"
    assert skipped["relative-link.sealed"] == "a symbolic link: not followed"
    assert not any("victim" in name for name in skipped)


def test_a_file_named_directly_is_still_rewrapped(tmp_path: Path) -> None:
    keyring = new_keyring(tmp_path)
    target = tmp_path / "elsewhere" / "named.sealed"
    write_record_file(target, keyring, records=1)
    link = tmp_path / "named-link.sealed"
    link.symlink_to(target)
    assert keyring.rotate(EU_KEK).version == "2"
    report = rewrap_paths([link], kms=keyring, kek_uri=EU_KEK,
                          journal_path=tmp_path / "journal.jsonl")
    assert report.files_changed == [str(target.resolve())]
