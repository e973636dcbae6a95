"""Host feeding: epoch packs are real windows of the split, reproducible per epoch, and a
run fed from the host learns as one fed on the device."""

from __future__ import annotations

import numpy as np

from configs import fast
from tinytx_jax import parallel
from tinytx_jax.data import feeding
from tinytx_jax.training import train


class FakeDevice:
    process_index = 0

    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_only_what_does_not_fit_a_device_is_fed_from_the_host():
    gpu = FakeDevice({"bytes_limit": 16_000})
    assert feeding.fits_on_devices(4_000, [gpu]) and not feeding.fits_on_devices(4_001, [gpu])
    assert feeding.fits_on_devices(10**12, [FakeDevice(None)])  # a CPU: host memory anyway
    assert not feeding.from_host("auto", 4_000, [gpu])
    assert feeding.from_host("auto", 5_000, [gpu]) and feeding.from_host("host", 1, [gpu])
    assert not feeding.from_host("device", 5_000, [gpu])


def pack_windows(feed: feeding.HostFeed, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    tokens, weights, starts = (None if a is None else np.asarray(a) for a in feed.pack(epoch))
    width = feed.block_size + 1
    assert np.array_equal(starts, np.arange(feed.windows) * width)
    return tokens.reshape(feed.windows, width), weights


def test_a_pack_holds_windows_of_the_split_drawn_again_each_epoch():
    mesh = parallel.make_mesh()
    tokens = np.arange(1000, dtype=np.uint16)
    feed = feeding.HostFeed(tokens, None, None, windows=24, block_size=9, seed=3, mesh=mesh)
    windows, weights = pack_windows(feed, 1)
    assert weights is None and windows.dtype == np.uint16
    assert all(np.array_equal(w, np.arange(w[0], w[0] + 10)) for w in windows)
    assert np.array_equal(windows, pack_windows(feed, 1)[0])  # a resumed epoch draws the same
    assert not np.array_equal(windows, pack_windows(feed, 2)[0])


def test_a_pack_starts_at_the_allowed_starts_and_carries_the_weights():
    mesh = parallel.make_mesh()
    tokens = np.arange(500, dtype=np.uint16)
    weights = (np.arange(500) % 2).astype(np.float32)
    starts = np.array([0, 100, 250], np.int32)
    feed = feeding.HostFeed(tokens, weights, starts, windows=16, block_size=7, seed=0, mesh=mesh)
    windows, packed_weights = pack_windows(feed, 5)
    assert set(windows[:, 0].tolist()) <= {0, 100, 250}
    assert np.array_equal(packed_weights.reshape(16, 8), weights[windows.astype(np.int64)])


def test_a_run_fed_from_the_host_reaches_the_target(tmp_path):
    config = fast.get_config()
    config.feed = "host"
    lines: list[str] = []
    _, history = train.train_and_evaluate(config, str(tmp_path), log=lines.append)
    assert history[-1].val_acc >= 0.99
    assert "windows fed from host memory" in next(x for x in lines if x.startswith("Training"))
