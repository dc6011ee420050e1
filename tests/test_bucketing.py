"""Length bucketing: ``fit(..., bucket_by_length=True)`` (issue 13, part 4)."""
import numpy as np
import pytest

from cylstm.engine import bucketing
from cylstm.engine.data_adapters import ArrayDataAdapter
from cylstm.layers import LSTM, Dense, Embedding, Input, Masking
from cylstm.models import Sequential
from cylstm.optimizers import SGD

I, H = 3, 4


def _padded(n, T, seed=0, lo=1):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, T + 1, size=n)
    x = rng.standard_normal((n, T, I))
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
    return x, lengths


def _model(seq=False, dtype="float64"):
    m = Sequential([Input(shape=(None, I)), Masking(0.0, dtype=dtype),
                    LSTM(H, return_sequences=seq, seed=1, dtype=dtype),
                    Dense(2, seed=2, dtype=dtype)])
    m.compile(optimizer=SGD(learning_rate=0.1), loss="mse")
    return m


def _adapter(m, x, y, bs, pool, shuffle=True):
    xs, ys, sws = m._prepare_arrays(x, y, None, None, True, "fit")
    return bucketing.bucketed(m, ArrayDataAdapter(m, xs, ys, sws, bs, shuffle), pool)


def test_sample_lengths_from_masking_and_embedding():
    x, lengths = _padded(20, 9, seed=1)
    x[3, 0] = 0.0  # a masked step before valid ones does not shorten the sample
    m = _model()
    m.build((None, None, I))
    np.testing.assert_array_equal(bucketing.sample_lengths(m, [x]), lengths)
    e = Sequential([Input(shape=(None,), dtype="int64"), Embedding(5, 3, mask_zero=True),
                    LSTM(2)])
    ids = np.array([[1, 2, 0, 0], [0, 3, 4, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    e.build((None, None))
    np.testing.assert_array_equal(bucketing.sample_lengths(e, [ids]), [2, 3, 0, 4])


def test_every_sample_once_shuffled_and_grouped_by_length():
    n, T, bs = 640, 50, 8
    x, lengths = _padded(n, T, seed=2)
    m = _model()
    ad = _adapter(m, x, np.zeros((n, 2)), bs, pool=16)
    plain = [len(b) for b in np.array_split(np.arange(n), range(bs, n, bs))]
    orders = []
    for _ in range(2):
        batches = ad.batch_indices()
        flat = np.concatenate(batches)
        np.testing.assert_array_equal(np.sort(flat), np.arange(n))  # each sample once
        assert sorted(len(b) for b in batches) == sorted(plain)     # same batch sizes
        spread = np.mean([np.ptp(lengths[b]) for b in batches])
        # random batches of 8 from uniform [1, 50] spread about 38 steps; pools of 128
        # sorted into 16 batches leave a few
        assert spread < 6, spread
        orders.append(flat)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch
    # the batch order is shuffled too: lengths do not rise batch after batch
    maxes = [lengths[b].max() for b in batches]
    assert not np.all(np.diff(maxes) >= 0)


def test_batches_are_cut_after_their_longest_sample():
    x, lengths = _padded(40, 30, seed=3)
    y = np.random.default_rng(3).standard_normal((40, 30, 2))
    sw = np.random.default_rng(4).random((40, 30))
    m = _model(seq=True)
    xs, ys, sws = m._prepare_arrays(x, y, sw, None, True, "fit")
    ad = bucketing.bucketed(m, ArrayDataAdapter(m, xs, ys, sws, 5, True), 8)
    m._shuffle_rng = np.random.default_rng(9)
    batches = ad.batch_indices()
    m._shuffle_rng = np.random.default_rng(9)
    cut = 0
    for (bx, by, bw, k), idx in zip(ad.epoch(), batches):
        L = int(lengths[idx].max())
        cut += L < 30
        assert k == len(idx)
        np.testing.assert_array_equal(bx[0], x[idx, :L])
        np.testing.assert_array_equal(by[0], y[idx, :L])   # per-step targets cut too
        np.testing.assert_array_equal(bw[0], sw[idx, :L])  # and per-step weights
    assert cut > 0


@pytest.mark.parametrize("seq", [False, True])
def test_a_cut_batch_trains_as_the_uncut_one(seq):
    # the steps past the longest sample are masked for all: states and masked loss agree
    x, lengths = _padded(6, 20, seed=4, lo=3)
    lengths[:] = np.minimum(lengths, 12)
    x[:, 12:] = 0.0
    rng = np.random.default_rng(4)
    y = rng.standard_normal((6, 20, 2) if seq else (6, 2))
    a, b = _model(seq), _model(seq)
    b.set_weights(a.get_weights())
    L = int(lengths.max())
    la = a.train_on_batch(x, y)
    lb = b.train_on_batch(x[:, :L], y[:, :L] if seq else y)
    assert lb == pytest.approx(la, rel=1e-12)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wb, wa, rtol=1e-11, atol=1e-14)


def test_fit_equals_train_on_batch_over_the_same_batches():
    n, T = 48, 25
    x, _ = _padded(n, T, seed=5)
    y = np.random.default_rng(5).standard_normal((n, 2))
    a, b = _model(), _model()
    b.set_weights(a.get_weights())
    a._shuffle_rng = np.random.default_rng(11)
    ha = a.fit(x, y, batch_size=4, epochs=1, verbose=0, bucket_by_length=4)
    b._shuffle_rng = np.random.default_rng(11)
    batches = _adapter(b, x, y, 4, pool=4).batch_indices()
    losses = [b.train_on_batch(x[idx], y[idx]) for idx in batches]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-10, atol=1e-13)
    sizes = [len(i) for i in batches]
    assert ha.history["loss"][0] == pytest.approx(np.dot(losses, sizes) / n, rel=1e-10)


def test_fit_with_bucketing_learns():
    x, lengths = _padded(96, 30, seed=6, lo=2)
    y = np.stack([x.sum(axis=(1, 2)) / 10, lengths / 30.0], axis=1)
    m = _model(dtype="float32")
    h = m.fit(x, y, batch_size=8, epochs=6, verbose=0, bucket_by_length=True)
    assert h.history["loss"][-1] < 0.8 * h.history["loss"][0]


def test_unmasked_data_is_refused():
    m = Sequential([Input(shape=(None, I)), LSTM(H), Dense(2)])
    m.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="bucket_by_length.*no input .* is masked"):
        m.fit(np.zeros((4, 5, I)), np.zeros((4, 2)), verbose=0, bucket_by_length=True)


def test_batch_sources_and_bad_values_are_refused():
    m = _model()
    x, _ = _padded(8, 5)
    with pytest.raises(ValueError, match="bucket_by_length needs array data"):
        m.fit([(x, np.zeros((8, 2)))], verbose=0, bucket_by_length=True)
    for bad in ("yes", 0, -1, 2.5):
        with pytest.raises(ValueError, match="bucket_by_length"):
            m.fit(x, np.zeros((8, 2)), verbose=0, bucket_by_length=bad)
