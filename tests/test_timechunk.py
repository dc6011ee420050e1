"""Bounded-memory inference (issue 13, part 3): ``predict(x, time_chunk=k)`` and
``model(x, time_chunk=k)`` run all layers a chunk of time steps at a time.

The reference is the same model's unchunked forward; chunking must change
nothing but rounding, and the number and length of the layer calls show that it
really ran in chunks.
"""
import tracemalloc

import numpy as np
import pytest

import cylstm
from cylstm import _timechunk, _workspace
from cylstm.layers import (
    LSTM,
    Activation,
    Bidirectional,
    Dense,
    Dropout,
    Embedding,
    Masking,
    RepeatVector,
    TimeDistributed,
)
from cylstm.models import Sequential


@pytest.fixture(autouse=True)
def _budget():
    cylstm.set_memory_budget(None)
    yield
    cylstm.set_memory_budget(None)


def _count_lstm_calls(model, monkeypatch):
    """Record the number of time steps of every LSTM forward call."""
    seen = []
    orig = LSTM._forward

    def spy(self, x, *a, **kw):
        seen.append(x.shape[1])
        return orig(self, x, *a, **kw)

    monkeypatch.setattr(LSTM, "_forward", spy)
    return seen


def _stack(dtype="float64", seqs=False, masking=True):
    layers = [Masking(0.0, input_shape=(None, 3), dtype=dtype)] if masking else [
        Dense(3, input_shape=(None, 3), dtype=dtype, seed=0)]
    layers += [LSTM(7, return_sequences=True, seed=1), TimeDistributed(Dense(5, seed=2)),
               Activation("tanh"), Dropout(0.3), LSTM(6, return_sequences=seqs, seed=3),
               Dense(2, seed=4)]
    return Sequential(layers)


def _masked_x(rng, B=5, T=41):
    x = rng.standard_normal((B, T, 3))
    x[0, 10:30] = 0.0  # a hole across chunks
    x[1, :25] = 0.0    # left padding past the first chunks
    x[2, 33:] = 0.0    # right padding
    x[3] = 0.0         # all masked
    return x


@pytest.mark.parametrize("k", [1, 4, 7, 41, 100])
@pytest.mark.parametrize("seqs", [False, True])
def test_chunks_equal_the_whole_sequence(k, seqs, monkeypatch):
    rng = np.random.default_rng(0)
    x = _masked_x(rng)
    m = _stack(seqs=seqs)
    want = m.predict(x, verbose=0)
    calls = _count_lstm_calls(m, monkeypatch)
    got = m.predict(x, time_chunk=k, verbose=0)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    n = -(-41 // k) if k < 41 else 1
    assert len(calls) == 2 * n and max(calls) == min(k, 41)
    np.testing.assert_allclose(m(x, time_chunk=k), want, rtol=1e-12, atol=1e-13)


def test_float32_and_no_mask():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 30, 3)).astype(np.float32)
    m = _stack(dtype="float32", seqs=True, masking=False)
    np.testing.assert_allclose(m.predict(x, time_chunk=8, verbose=0), m.predict(x, verbose=0),
                               rtol=2e-5, atol=2e-6)


def test_embedding_mask_zero():
    rng = np.random.default_rng(2)
    x = rng.integers(1, 12, (4, 37))
    x[0, 5:20] = 0
    x[1, :30] = 0
    x[2] = 0
    m = Sequential([Embedding(12, 4, mask_zero=True, dtype="float64"),
                    LSTM(5, return_sequences=True, seed=1), LSTM(3, seed=2), Dense(2)])
    np.testing.assert_allclose(m.predict(x, time_chunk=6, verbose=0), m.predict(x, verbose=0),
                               rtol=1e-12, atol=1e-13)


def test_layers_after_the_last_lstm_run_once():
    """An encoder-decoder: the chunked encoder's final state feeds RepeatVector and a
    decoder LSTM that run unchunked."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 50, 3))
    m = Sequential([LSTM(6, return_sequences=True, input_shape=(None, 3), dtype="float64",
                         seed=1), LSTM(4, seed=2), RepeatVector(5),
                    LSTM(3, return_sequences=True, go_backwards=True, seed=3), Dense(2)])
    np.testing.assert_allclose(m.predict(x, time_chunk=9, verbose=0), m.predict(x, verbose=0),
                               rtol=1e-12, atol=1e-13)


def test_stateful_layers_carry_across_chunks_and_batches():
    rng = np.random.default_rng(4)
    x1, x2 = rng.standard_normal((2, 2, 20, 3))
    outs = []
    for k in (None, 6):
        m = Sequential([LSTM(5, stateful=True, return_sequences=True, seed=1,
                             batch_input_shape=(2, None, 3), dtype="float64"),
                        LSTM(4, stateful=True, seed=2)])
        outs.append([m.predict(x1, time_chunk=k, verbose=0),
                     m.predict(x2, time_chunk=k, verbose=0),
                     [np.array(s) for s in m.layers[1].states]])
    for a, b in zip(outs[0][:2], outs[1][:2]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)
    for a, b in zip(outs[0][2], outs[1][2]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)


def test_automatic_when_the_intermediates_exceed_the_budget(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 300, 3))
    m = _stack(masking=False)
    want = m.predict(x, verbose=0)
    calls = _count_lstm_calls(m, monkeypatch)
    cylstm.set_memory_budget(10_000)
    k, why = _timechunk.chunk_plan(m, x.shape)
    # the first LSTM holds most per step: its input (3), output (7), gates (28)
    assert k == 10_000 // (2 * (3 + 7 + 28) * 8) and "exceed the memory budget" in why
    np.testing.assert_allclose(m.predict(x, verbose=0), want, rtol=1e-12, atol=1e-13)
    assert len(calls) == 2 * -(-300 // k)
    calls.clear()
    cylstm.set_memory_budget(None)
    m.predict(x, verbose=0)
    assert calls == [300, 300]


def test_automatic_leaves_models_that_cannot_chunk(monkeypatch):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 40, 3))
    m = Sequential([Bidirectional(LSTM(4, return_sequences=True, seed=1),
                                  input_shape=(None, 3)), LSTM(3, seed=2)])
    want = m.predict(x, verbose=0)
    cylstm.set_memory_budget(1000)
    np.testing.assert_allclose(m.predict(x, verbose=0), want, rtol=1e-6)


@pytest.mark.parametrize("first,why", [
    (Bidirectional(LSTM(4, return_sequences=True)), "Bidirectional .* whole sequence"),
    (LSTM(4, return_sequences=True, go_backwards=True), "go_backwards=True"),
])
def test_models_that_cannot_chunk_are_refused(first, why):
    m = Sequential([Input_(3), first, LSTM(3)])
    with pytest.raises(ValueError, match=why):
        m.predict(np.zeros((1, 10, 3)), time_chunk=4, verbose=0)
    with pytest.raises(ValueError, match=why):
        m(np.zeros((1, 10, 3)), time_chunk=4)


def Input_(features):
    from cylstm.layers import Input

    return Input(shape=(None, features))


@pytest.mark.parametrize("bad", [0, -2, 2.5, "4", True])
def test_bad_time_chunk(bad):
    m = _stack()
    with pytest.raises(ValueError, match="time_chunk"):
        m.predict(np.zeros((1, 5, 3)), time_chunk=bad, verbose=0)
    with pytest.raises(ValueError, match="time_chunk"):
        m(np.zeros((1, 5, 3)), time_chunk=bad)


def test_training_call_refuses_time_chunk():
    with pytest.raises(ValueError, match="inference only"):
        _stack()(np.zeros((1, 5, 3)), training=True, time_chunk=2)


def test_memory_holds_one_chunk_of_intermediates():
    """(1, T, F) with return_sequences=False at the top: the chunked forward never
    holds a whole intermediate sequence (tracemalloc sees NumPy's allocations)."""
    T = 20000
    x = np.random.default_rng(7).standard_normal((1, T, 4)).astype(np.float32)
    m = Sequential([LSTM(32, return_sequences=True, input_shape=(None, 4), seed=1),
                    TimeDistributed(Dense(32)), LSTM(32, seed=2), Dense(1)])
    want = m.predict(x, verbose=0)

    def peak(k):
        _workspace.clear()
        tracemalloc.start()
        try:
            y = m.predict(x, time_chunk=k, verbose=0)
            return tracemalloc.get_traced_memory()[1], y
        finally:
            tracemalloc.stop()
            _workspace.clear()

    full, _ = peak(None)
    chunked, got = peak(200)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert full >= T * (32 * 4 + 32) * 4          # gates and outputs of a whole layer
    assert chunked <= 200 * (32 * 4 + 3 * 32 + 4) * 4 * 3 + 2**16
