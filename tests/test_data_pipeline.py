"""Training samples and the iterator: contents, deterministic shuffling, exact resume, workers."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic_jax.data import (NormStats, TrainingSource, WeatherStore, compute_stats, day_year_progress,
                             make_demo_data, make_train_iterator)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> WeatherStore:
    path = make_demo_data(tmp_path_factory.mktemp("pipe") / "s.zarr", resolution_deg=15.0, start="2020-02-27",
                          end="2020-03-04T18:00", seed=2)
    with WeatherStore(path) as s:
        yield s


@pytest.fixture(scope="module")
def stats(store) -> NormStats:
    return compute_stats(store, step_hours=6)


def _source(store, stats, **kw) -> TrainingSource:
    args = dict(num_history_steps=2, history_spacing_hours=12, step_hours=6, num_targets=2)
    return TrainingSource(store, stats, **{**args, **kw})


def test_sample_contents(store, stats):
    src = _source(store, stats)
    # history reaches 12 h back, targets 12 h ahead: 28 times minus 2 at each end
    assert len(src) == store.times.size - 4
    i = 5
    t0 = src.init_times[i]
    assert t0 == store.times[2 + i]
    s = src[i]
    want_times = [t0 - np.timedelta64(12, "h"), t0, t0 + np.timedelta64(6, "h"), t0 + np.timedelta64(12, "h")]
    want = stats.normalize(store.states(want_times))
    np.testing.assert_allclose(s["history"], want[:2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(s["targets"], want[2:], rtol=0, atol=1e-6)
    assert s["history"].shape == (2, 24, 13, 82) and s["history"].dtype == np.float32
    np.testing.assert_array_equal(s["day_year"], day_year_progress([t0])[0])
    assert s["init_time"] == (t0 - np.datetime64("1970-01-01", "ns")) // np.timedelta64(1, "h")
    assert s["init_time"].dtype == np.int64


def test_init_time_selection(store, stats):
    src = _source(store, stats, start="2020-03-01", end="2020-03-01T18:00")
    np.testing.assert_array_equal(src.init_times, store.times[(store.times >= np.datetime64("2020-03-01"))
                                                              & (store.times <= np.datetime64("2020-03-01T18"))])
    src = _source(store, stats, init_times=["2020-03-02T06:00", "2020-02-29"])
    assert len(src) == 2 and src.init_times[1] == np.datetime64("2020-02-29")
    with pytest.raises(ValueError, match="init time 2020-02-27T06:00 needs states at offsets"):
        _source(store, stats, init_times=["2020-02-27T06:00"])
    with pytest.raises(ValueError, match="time 2020-05-01T00:00 is outside store"):
        _source(store, stats, init_times=["2020-05-01"])
    with pytest.raises(IndexError):
        _source(store, stats)[1000]


def test_day_year_progress():
    got = day_year_progress(["2020-01-01T00:00", "2020-12-31T18:00", "2021-03-01T06:30", "2021-12-31T23:00"])
    want = [[0.0, 0.0], [0.75, 365 / 366], [6.5 / 24, 59 / 365], [23 / 24, 364 / 365]]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_shuffling_is_seeded_and_reshuffles_each_epoch(store, stats):
    src = _source(store, stats)
    n_batches = len(src) // 3
    it = make_train_iterator(src, batch_size=3, seed=7, num_epochs=2)
    epochs = [np.concatenate([b["init_time"] for b in _take(it, n_batches)]) for _ in range(2)]
    with pytest.raises(StopIteration):
        next(it)
    all_times = src._hours
    for e in epochs:  # each epoch: distinct samples, remainder dropped
        assert len(set(e)) == len(e) == n_batches * 3 and set(e) <= set(all_times)
    assert not np.array_equal(epochs[0], epochs[1])
    again = make_train_iterator(src, batch_size=3, seed=7, num_epochs=1)
    np.testing.assert_array_equal(np.concatenate([b["init_time"] for b in again]), epochs[0])
    other = make_train_iterator(src, batch_size=3, seed=8, num_epochs=1)
    assert not np.array_equal(np.concatenate([b["init_time"] for b in other]), epochs[0])
    ordered = make_train_iterator(src, batch_size=3, seed=0, num_epochs=1, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([b["init_time"] for b in ordered]), all_times[: n_batches * 3])


def test_host_shards_split_each_epoch(store, stats):
    src = _source(store, stats)
    full = [b["init_time"] for b in make_train_iterator(src, batch_size=2, seed=4, num_epochs=1)]
    shards = [[b["init_time"] for b in make_train_iterator(src, batch_size=2, seed=4, num_epochs=1,
                                                            shard_index=i, shard_count=2)] for i in range(2)]
    np.testing.assert_array_equal(np.stack(shards[0]), np.stack(full[0::2]))
    np.testing.assert_array_equal(np.stack(shards[1]), np.stack(full[1::2]))


def test_resume_mid_epoch_gives_the_same_batches(store, stats):
    src = _source(store, stats)
    it = make_train_iterator(src, batch_size=2, seed=3)
    _take(it, 13)  # past the end of the first epoch (12 batches)
    state = it.get_state()
    following = _take(it, 4)
    resumed = make_train_iterator(src, batch_size=2, seed=3)
    resumed.set_state(state)
    _same(_take(resumed, 4), following)


def test_two_workers_give_the_same_batches_as_one_process(store, stats):
    src = _source(store, stats)
    single = _take(make_train_iterator(src, batch_size=2, seed=5), 7)
    with make_train_iterator(src, batch_size=2, seed=5, worker_count=2) as it:
        first = _take(it, 4)
        state = it.get_state()
        rest = _take(it, 3)
        assert all(type(v) is np.ndarray for b in rest for v in b.values())
    _same(first + rest, single)
    with make_train_iterator(src, batch_size=2, seed=5, worker_count=2) as it:
        it.set_state(state)
        _same(_take(it, 3), single[4:])


def test_batches_placed_on_a_sharding(store, stats):
    jax = pytest.importorskip("jax")
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    src = _source(store, stats)
    batch = next(make_train_iterator(src, batch_size=2, seed=0, sharding=sharding))
    assert isinstance(batch["history"], jax.Array) and batch["history"].sharding == sharding
    assert batch["history"].shape == (2, 2, 24, 13, 82) and batch["day_year"].shape == (2, 2)


def test_iterator_errors(store, stats):
    src = _source(store, stats)
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_train_iterator(src, batch_size=1000, seed=0)
    with pytest.raises(ValueError, match="statistics have 3 channels"):
        TrainingSource(store, NormStats(np.zeros(3), np.ones(3)), num_history_steps=1, history_spacing_hours=6,
                       step_hours=6)
