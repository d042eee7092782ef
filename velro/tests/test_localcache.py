"""velro.localcache: the bounded TTL cache and the machine-wide epoch."""

from __future__ import annotations

from velro.localcache import LocalCache, SharedEpoch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_its_ttl_and_no_longer():
    clock = Clock()
    cache = LocalCache(max_entries=10, clock=clock)
    cache.set("k", "v")
    clock.now += 1.99
    assert cache.get("k", 2.0) == "v"
    clock.now += 0.01
    assert cache.get("k", 2.0) is None


def test_a_full_cache_starts_again_empty():
    cache = LocalCache(max_entries=2)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.set("c", 3)
    assert len(cache) == 1 and cache.get("c", 10) == 3 and cache.get("a", 10) is None


def test_a_bump_through_one_mapping_is_seen_once_through_another(tmp_path):
    path = str(tmp_path / "epoch")
    writer, reader = SharedEpoch(path), SharedEpoch(path)  # as two processes map it
    reader.changed()  # first look: remembers the value
    assert reader.changed() is False
    writer.bump()
    assert reader.changed() is True
    assert reader.changed() is False


def test_an_unusable_epoch_file_always_says_changed(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    epoch = SharedEpoch(str(blocker / "epoch"))  # a file under a file: ENOTDIR
    epoch.bump()  # no error
    assert epoch.changed() is True
    assert epoch.changed() is True  # callers then trust nothing they cached
