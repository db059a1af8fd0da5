"""The data-parallel loader: the shards make up the epoch, and N x B is one process at N*B."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minires.data import Compose, DataLoader, DistributedDataLoader, RandomCrop


def _data(n: int):
    images = np.arange(n * 2 * 4 * 4, dtype=np.float32).reshape(n, 2, 4, 4)
    return images, np.arange(n)


def _loaders(n, batch, world, drop_last, transform=None):
    images, labels = _data(n)
    return [
        DistributedDataLoader(
            images,
            labels,
            batch,
            num_replicas=world,
            rank=r,
            shuffle=True,
            drop_last=drop_last,
            seed=7,
            transform=transform,
        )
        for r in range(world)
    ]


@given(
    n=st.integers(1, 60),
    batch=st.integers(1, 7),
    world=st.integers(1, 4),
    drop_last=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_shards_make_up_the_epoch_and_no_sample_is_seen_twice(n, batch, world, drop_last, epoch):
    loaders = _loaders(n, batch, world, drop_last)
    shards = [ld.shard_indices(epoch) for ld in loaders]
    seen = np.concatenate(shards)
    assert len(np.unique(seen)) == len(seen)  # no sample twice
    assert len({len(s) for s in shards}) == 1  # every rank the same number of images
    g = batch * world
    # Left out: the trimmed tail of the last batch (< world), or the dropped last batch (< g).
    assert n - len(seen) < (g if drop_last else world)
    if n % g == 0:
        assert sorted(seen) == list(range(n))  # the union is the epoch
    batches = [list(ld) for ld in loaders]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(loaders[0])
    assert all(len(set(map(len, (x for x, _ in bs)))) <= 2 for bs in batches)


def test_n_processes_at_b_see_exactly_what_one_process_sees_at_n_times_b():
    crop = Compose([RandomCrop(padding=1)])
    loaders = _loaders(50, 4, 3, True, transform=crop)
    images, labels = _data(50)
    one = DataLoader(images, labels, 12, shuffle=True, drop_last=True, seed=7, transform=crop)
    for epoch in range(2):
        whole = list(one)
        parts = [list(ld) for ld in loaders]
        assert len(whole) == len(parts[0]) == 50 // 12
        for b, (x, y) in enumerate(whole):
            np.testing.assert_array_equal(np.concatenate([p[b][0] for p in parts]), x)
            np.testing.assert_array_equal(np.concatenate([p[b][1] for p in parts]), y)
        assert all(ld.epoch == epoch + 1 for ld in loaders)


def test_resumes_exactly_mid_epoch():
    (a,) = _loaders(40, 3, 1, True)
    b = _loaders(40, 3, 2, True)[1]
    expected = [y for _, y in b][:]  # an uninterrupted epoch
    b2 = _loaders(40, 3, 2, True)[1]
    it = iter(b2)
    first = [next(it)[1] for _ in range(2)]
    state = b2.state_dict()
    b3 = _loaders(40, 3, 2, True)[1]
    b3.load_state_dict(state)
    rest = [y for _, y in b3]
    assert [list(y) for y in first + rest] == [list(y) for y in expected]
    assert len(a) == 40 // 3


@pytest.mark.parametrize("bad", [{"num_replicas": 0}, {"rank": 2}, {"rank": -1}])
def test_bad_arguments(bad):
    images, labels = _data(4)
    kwargs = {"num_replicas": 2, "rank": 0, **bad}
    with pytest.raises(ValueError, match="DistributedDataLoader"):
        DistributedDataLoader(images, labels, 2, **kwargs)
