"""Fault points are installed at the storage seam: a stage's point fires right after its first
artifact is written, once, and without FACE2PAINT_FAULTS the stage gets its storage untouched.
(tests/test_faults.py drives the same points in real workers.)"""

from __future__ import annotations

import pytest

from face2paint.jobs.storage import LocalStorage
from face2paint.worker import faults


@pytest.fixture
def fault_env(monkeypatch, tmp_path):
    def set_rules(rules: str):
        monkeypatch.setenv(faults.ENV_RULES, rules)
        monkeypatch.setenv(faults.ENV_DIR, str(tmp_path / "markers"))
        (tmp_path / "markers").mkdir(exist_ok=True)
        faults._config.cache_clear()
        return tmp_path / "markers"

    yield set_rules
    faults._config.cache_clear()


def test_without_faults_the_stage_gets_its_storage_as_it_is(monkeypatch, tmp_path):
    monkeypatch.delenv(faults.ENV_RULES, raising=False)
    storage = LocalStorage(tmp_path)
    assert faults.at_first_write(storage, "parse", "item-1", ("a.png",)) is storage


def test_the_point_fires_right_after_the_first_write_once(fault_env, tmp_path):
    markers = fault_env("pause:stylize:victim")
    (markers / "release.stylize.item-1").touch()  # the pause returns at once
    storage = LocalStorage(tmp_path / "objects")
    paused = markers / "paused.stylize.item-1"

    other = faults.at_first_write(storage, "stylize", "item-2", ("sibling.png",))
    other.put_bytes("jobs/j/items/item-2/stylize/background.npy", b"x")
    assert not list(markers.glob("paused.*"))  # the rule matches file names with "victim"

    wrapped = faults.at_first_write(storage, "stylize", "item-1", ("victim.png",))
    assert not paused.exists()
    wrapped.put_bytes("jobs/j/items/item-1/stylize/background.npy", b"first")
    assert paused.exists() and storage.get_bytes("jobs/j/items/item-1/stylize/background.npy") == b"first"
    paused.unlink()
    wrapped.put_bytes("jobs/j/items/item-1/stylize/faces.npz", b"second")
    assert not paused.exists()  # once per stage run
    assert wrapped.exists("jobs/j/items/item-1/stylize/faces.npz")  # reads go straight through
