"""covlight.atomic: a file is replaced whole, or left as it was."""

from __future__ import annotations

import os

import pytest

from covlight.atomic import replacing, write_json


def test_atomic_write_replaces_whole_or_leaves_the_target(tmp_path):
    target = tmp_path / "sub" / "status.json"
    write_json(target, {"state": "running"})
    assert target.read_text() == '{\n "state": "running"\n}\n'
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n "state": "running"\n}\n' and os.listdir(target.parent) == ["status.json"]
