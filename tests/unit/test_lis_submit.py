"""The LIS client's parts that need no service: the idempotency key and MLLP delivery."""

from __future__ import annotations

from clients.lis.submit import request_id_for


def _case(folder, contents: dict[str, bytes]):
    folder.mkdir(parents=True)
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return sorted(folder.iterdir())


def test_the_request_id_follows_the_image_bytes_not_their_names_and_sizes(tmp_path):
    first = _case(tmp_path / "scan1", {"f1.png": b"\x89PNG first scan", "f2.png": b"\x89PNG other field"})
    rescan = _case(tmp_path / "scan2", {"f1.png": b"\x89PNG FIRST SCAN", "f2.png": b"\x89PNG other field"})
    copy = _case(tmp_path / "copy", {"f1.png": b"\x89PNG first scan", "f2.png": b"\x89PNG other field"})
    assert [p.stat().st_size for p in first] == [p.stat().st_size for p in rescan]  # same names, same sizes
    assert request_id_for("C1", "A1", first) != request_id_for("C1", "A1", rescan)  # new pixels: a new request
    assert request_id_for("C1", "A1", first) == request_id_for("C1", "A1", copy)  # a true resubmission: same id
    assert request_id_for("C1", "A1", first) != request_id_for("C2", "A1", first)
