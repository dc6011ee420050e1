"""Keras's data forms (issue 12, part 3): lists/iterables of batches, generators with
steps_per_epoch, PyDataset, the timeseries Dataset (take/skip/len), validation_data in
every form, Keras 3's spellings, and the errors for malformed batches.

Each form is checked against the same training on arrays: with shuffle=False and the
same batches, the weights after fit must be identical."""
import warnings

import numpy as np
import pytest

import cylstm
from cylstm import layers as L
from cylstm.models import Model, Sequential
from cylstm.utils import PyDataset, timeseries_dataset_from_array


def _model(seed=0, dtype="float64"):
    m = Sequential([L.LSTM(4, input_shape=(None, 3), seed=seed, dtype=dtype),
                    L.Dense(1, seed=seed + 1)])
    m.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    return m


def _data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5, 3)), rng.standard_normal((n, 1))


def _batches(x, y, bs, sw=None):
    out = []
    for s in range(0, len(x), bs):
        b = (x[s:s + bs], y[s:s + bs])
        out.append(b if sw is None else b + (sw[s:s + bs],))
    return out


def _same_weights(a, b):
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)


def test_list_of_batches_with_sample_weights_equals_arrays():
    x, y = _data()
    sw = np.linspace(0.5, 2, len(x))
    ref, got = _model(), _model()
    hr = ref.fit(x, y, batch_size=6, epochs=2, shuffle=False, sample_weight=sw, verbose=0)
    hg = got.fit(_batches(x, y, 6, sw), epochs=2, verbose=0)
    _same_weights(ref, got)
    assert hr.history == hg.history
    # evaluate / predict on the same batches
    assert got.evaluate(_batches(x, y, 6), verbose=0) == pytest.approx(
        got.evaluate(x, y, batch_size=6, verbose=0), rel=1e-12)
    # (batches of other sizes may run another kernel path: equal within rounding)
    np.testing.assert_allclose(got.predict(_batches(x, y, 6), verbose=0),
                               got.predict(x, verbose=0), rtol=1e-12, atol=1e-15)


def test_generator_steps_per_epoch_continues_across_epochs():
    x, y = _data(24)
    seen = []

    def gen():
        i = 0
        while True:
            s = (i % 4) * 6
            seen.append(s)
            yield x[s:s + 6], y[s:s + 6]
            i += 1

    ref, got = _model(), _model()
    ref.fit(x, y, batch_size=6, epochs=3, shuffle=False, verbose=0)
    hist = got.fit(gen(), steps_per_epoch=2, epochs=6, verbose=0)
    _same_weights(ref, got)  # 6 epochs x 2 steps = the 12 batches of 3 array epochs
    assert len(hist.history["loss"]) == 6
    assert seen[:12] == [0, 6, 12, 18] * 3


def test_finite_generator_runs_out_with_kerass_warning():
    x, y = _data(12)
    model = _model()
    gen = (b for b in _batches(x, y, 4))
    with pytest.warns(UserWarning, match="ran out of data"):
        hist = model.fit(gen, steps_per_epoch=2, epochs=5, verbose=0)
    assert len(hist.history["loss"]) == 2  # 3 batches: one full epoch, one short one
    # a finite generator without steps_per_epoch is one epoch's worth
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit((b for b in _batches(x, y, 4)), epochs=1, verbose=0)


class _Seq(PyDataset):
    def __init__(self, x, y, bs, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.bs = x, y, bs
        self.epochs_ended = 0
        self.calls = []

    def __len__(self):
        return (len(self.x) + self.bs - 1) // self.bs

    def __getitem__(self, i):
        self.calls.append(i)
        s = i * self.bs
        return self.x[s:s + self.bs], self.y[s:s + self.bs]

    def on_epoch_end(self):
        self.epochs_ended += 1


@pytest.mark.parametrize("workers", [1, 3])
def test_pydataset_len_getitem_on_epoch_end_and_workers(workers):
    x, y = _data(22)
    ref, got = _model(), _model()
    ref.fit(x, y, batch_size=5, epochs=2, shuffle=False, verbose=0)
    ds = _Seq(x, y, 5, workers=workers, use_multiprocessing=False, max_queue_size=2)
    got.fit(ds, epochs=2, shuffle=False, verbose=0)
    _same_weights(ref, got)
    assert ds.epochs_ended == 2 and ds.calls == list(range(5)) * 2
    # shuffle=True shuffles the batch order, every batch once per epoch
    ds2 = _Seq(x, y, 5)
    _model().fit(ds2, epochs=3, verbose=0)
    for e in range(3):
        assert sorted(ds2.calls[5 * e:5 * e + 5]) == list(range(5))
    assert ds2.calls != list(range(5)) * 3
    # (batches of other sizes may run another kernel path: equal within rounding)
    np.testing.assert_allclose(got.predict(_Seq(x, y, 5), verbose=0), got.predict(x),
                               rtol=1e-12, atol=1e-15)


def test_timeseries_dataset_object_take_skip_len_and_validation():
    data = np.arange(100, dtype=np.float32)
    ds = cylstm.utils.timeseries_dataset_from_array(data[:-10], data[10:], sequence_length=10,
                                                    batch_size=32)
    assert isinstance(ds, cylstm.utils.Dataset) and len(ds) == 3
    assert [len(b[0]) for b in ds] == [32, 32, 17]
    assert len(ds.take(2)) == 2 and len(ds.skip(1)) == 2 and len(ds.take(-1)) == 3
    x0, y0 = next(iter(ds.skip(1)))
    np.testing.assert_array_equal(x0[0], data[32:42])
    assert y0[0] == data[42]
    assert len(ds.skip(5)) == 0 and len(ds[1:]) == 2
    with pytest.raises(TypeError, match="count"):
        ds.take(1.5)
    # the failure: validation_data with exactly 2 batches was read as (x, y)
    series = np.sin(np.arange(200) / 7).astype(np.float32)[:, None]
    train = timeseries_dataset_from_array(series[:-5], series[5:, 0], 10, batch_size=64)
    val = timeseries_dataset_from_array(series[:60], series[5:65, 0], 10, batch_size=32)
    assert len(val) == 2
    model = Sequential([L.LSTM(4, input_shape=(10, 1)), L.Dense(1)])
    model.compile("adam", "mse")
    hist = model.fit(train, epochs=2, validation_data=val, verbose=0).history
    assert len(hist["val_loss"]) == 2
    xs = np.concatenate([b[0] for b in val])
    ys = np.concatenate([b[1] for b in val])
    assert hist["val_loss"][-1] == pytest.approx(
        model.evaluate(xs, ys, batch_size=32, verbose=0), rel=1e-6)
    # validation_steps caps the validation batches
    h2 = model.fit(train, epochs=1, validation_data=val, validation_steps=1, verbose=0)
    assert h2.history["val_loss"][0] == pytest.approx(
        model.evaluate(val.take(1), verbose=0), rel=1e-6)


def test_validation_data_in_every_form_gives_the_same_numbers():
    x, y = _data(16)
    model = _model()
    model.fit(x, y, epochs=1, verbose=0)
    want = model.evaluate(x, y, batch_size=4, verbose=0)[0]
    forms = [(x, y), _batches(x, y, 4), (b for b in _batches(x, y, 4)), _Seq(x, y, 4),
             cylstm.utils.Dataset(_batches(x, y, 4))]
    for vd in forms:
        clone = _model()
        clone.set_weights(model.get_weights())
        hist = clone.fit(x[:1], y[:1], epochs=1, verbose=0, validation_data=vd,
                         validation_batch_size=4)
        # one SGD step on one sample happened first: recompute on the stepped weights
        assert hist.history["val_loss"][0] == pytest.approx(
            clone.evaluate(x, y, batch_size=4, verbose=0)[0], rel=1e-10)
    assert want > 0


def test_multi_input_dict_batches_from_a_generator():
    rng = np.random.default_rng(3)
    a = L.Input(shape=(None, 3), name="a")
    b = L.Input(shape=(2,), name="b")
    out = L.Dense(1, name="out")(L.concatenate([L.LSTM(3, seed=1)(a), b]))
    m1 = Model([a, b], out)
    m1.compile("sgd", "mse")
    xa, xb, y = rng.standard_normal((12, 4, 3)), rng.standard_normal((12, 2)), \
        rng.standard_normal((12, 1))
    w0 = m1.get_weights()
    m1.fit({"a": xa, "b": xb}, y, batch_size=4, shuffle=False, epochs=1, verbose=0)
    w_arrays = m1.get_weights()
    m1.set_weights(w0)

    def gen():
        for s in range(0, 12, 4):
            yield {"a": xa[s:s + 4], "b": xb[s:s + 4]}, {"out": y[s:s + 4]}

    m1.fit(gen(), epochs=1, verbose=0)
    for u, v in zip(w_arrays, m1.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-6)


def test_malformed_batches_name_the_index_and_content():
    x, y = _data(8)
    model = _model()

    def gen(bad):
        yield x[:4], y[:4]
        yield x[4:6], y[4:6]
        yield bad

    with pytest.raises(ValueError, match=r"batch 2 from the generator is malformed.*tuple of 4"):
        model.fit(gen((x, y, None, 1)), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"batch 2 .*ndarray\(3, 5, 2\).*axis 2: 3, got 2"):
        model.fit(gen((np.zeros((3, 5, 2)), y[:3])), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"batch 2 .*same number of samples"):
        model.fit(gen((x[:3], y[:2])), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"batch 2 .*no targets"):
        model.fit(gen(x[:3]), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"batch 0 from _Seq.*NaN"):
        model.fit(_Seq(np.full((4, 5, 3), np.nan), y[:4], 4), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="y must not be given"):
        model.fit(_batches(x, y, 4), y, verbose=0)
    with pytest.raises(ValueError, match="validation_split is only supported for array"):
        model.fit(_batches(x, y, 4), validation_split=0.5, verbose=0)


def test_keras3_spellings_and_set_random_seed():
    from cylstm.preprocessing import sequence

    assert cylstm.preprocessing.timeseries_dataset_from_array is \
        cylstm.utils.timeseries_dataset_from_array
    np.testing.assert_array_equal(sequence.pad_sequences([[1, 2], [3]], maxlen=3),
                                  [[0, 1, 2], [0, 0, 3]])
    assert cylstm.preprocessing.sequence.pad_sequences is cylstm.utils.pad_sequences

    def run():
        cylstm.utils.set_random_seed(1234)
        m = Sequential([L.LSTM(3, input_shape=(None, 2)), L.Dense(1)])
        m.compile("adam", "mse")
        rng = np.random.default_rng(0)
        m.fit(rng.standard_normal((16, 4, 2)), rng.standard_normal((16, 1)), epochs=2,
              batch_size=4, verbose=0)
        return m.get_weights()

    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="seed"):
        cylstm.utils.set_random_seed(1.5)
