"""Data helpers: Keras' documented window examples, a loop reference, padding."""
import numpy as np
import pytest

from cylstm import utils
from cylstm.utils import make_windows, pad_sequences, timeseries_dataset_from_array, to_categorical


def ref_windows(data, targets, L, stride, rate, start, end):
    """Plain loop over Keras' definition."""
    xs, ys = [], []
    p = start
    while p + (L - 1) * rate < end and (targets is None or p < len(targets)):
        xs.append(np.stack([data[p + j * rate] for j in range(L)]))
        if targets is not None:
            ys.append(targets[p])
        p += stride
    return np.array(xs), (None if targets is None else np.array(ys))


def test_keras_doc_example_strided():
    # keras docs: 99 steps, sequence_length=10, sampling_rate=2, sequence_stride=3
    data = np.arange(99)
    x = timeseries_dataset_from_array(data, None, 10, sequence_stride=3, sampling_rate=2,
                                      batch_size=None)
    np.testing.assert_array_equal(x[0], np.arange(0, 19, 2))
    np.testing.assert_array_equal(x[1], np.arange(3, 22, 2))
    np.testing.assert_array_equal(x[-1], np.arange(78, 97, 2))
    assert len(x) == 27


def test_keras_doc_example_forecasting():
    data = np.arange(100, dtype=np.float32)
    batches = timeseries_dataset_from_array(data[:-10], data[10:], sequence_length=10)
    inputs, targets = batches[0]
    np.testing.assert_array_equal(inputs[0], data[:10])
    assert targets[0] == data[10]
    assert inputs.dtype == np.float32
    assert sum(len(b[0]) for b in batches) == 81


@pytest.mark.parametrize("L,stride,rate,start,end", [
    (5, 1, 1, None, None), (4, 2, 3, None, None), (3, 1, 2, 7, 40), (6, 5, 1, 3, None),
    (1, 1, 1, None, 10)])
def test_matches_loop_reference(L, stride, rate, start, end):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((50, 3))
    targets = rng.standard_normal(45)
    x, y = timeseries_dataset_from_array(data, targets, L, sequence_stride=stride,
                                         sampling_rate=rate, batch_size=None,
                                         start_index=start, end_index=end)
    rx, ry = ref_windows(data, targets, L, stride, rate, start or 0, end or 50)
    np.testing.assert_array_equal(x, rx)
    np.testing.assert_array_equal(y, ry)
    assert x.shape == (len(rx), L, 3) and x.flags.c_contiguous


def test_batching_and_shuffle():
    data = np.arange(40.0)[:, None]
    targets = np.arange(40.0) * 10
    batches = timeseries_dataset_from_array(data, targets, 4, batch_size=16)
    assert [len(b[0]) for b in batches] == [16, 16, 5]
    sh = timeseries_dataset_from_array(data, targets, 4, batch_size=16, shuffle=True, seed=3)
    sh2 = timeseries_dataset_from_array(data, targets, 4, batch_size=16, shuffle=True, seed=3)
    xs = np.concatenate([b[0] for b in sh])
    ys = np.concatenate([b[1] for b in sh])
    np.testing.assert_array_equal(xs, np.concatenate([b[0] for b in sh2]))
    # each window still pairs with its own target
    np.testing.assert_array_equal(ys, xs[:, 0, 0] * 10)
    assert not np.array_equal(ys, targets[:37])
    np.testing.assert_array_equal(np.sort(ys), targets[:37])


def test_timeseries_bad_input():
    data = np.arange(20.0)
    with pytest.raises(ValueError, match="sequence_length"):
        timeseries_dataset_from_array(data, None, 0)
    with pytest.raises(TypeError, match="sequence_length"):
        timeseries_dataset_from_array(data, None, 2.5)
    with pytest.raises(ValueError, match="start_index"):
        timeseries_dataset_from_array(data, None, 3, start_index=25)
    with pytest.raises(ValueError, match="end_index"):
        timeseries_dataset_from_array(data, None, 3, start_index=5, end_index=4)
    with pytest.raises(ValueError, match="sampling_rate"):
        timeseries_dataset_from_array(data, None, 3, sampling_rate=20)
    with pytest.raises(ValueError, match="no complete window"):
        timeseries_dataset_from_array(data, None, 30)
    with pytest.raises(TypeError, match="data"):
        timeseries_dataset_from_array("abc", None, 2)


def test_make_windows_univariate():
    s = np.arange(10.0)
    x, y = make_windows(s, window=3)
    assert x.shape == (7, 3, 1) and y.shape == (7, 1)
    np.testing.assert_array_equal(x[0, :, 0], [0, 1, 2])
    np.testing.assert_array_equal(y[:, 0], np.arange(3, 10))
    x, y = make_windows(s, window=4, horizon=2, stride=3)
    assert x.shape == (2, 4, 1) and y.shape == (2, 2)
    np.testing.assert_array_equal(x[1, :, 0], [3, 4, 5, 6])
    np.testing.assert_array_equal(y[1], [7, 8])


def test_make_windows_multivariate():
    s = np.arange(24.0).reshape(12, 2)
    x, y = make_windows(s, window=5)
    assert x.shape == (7, 5, 2) and y.shape == (7, 2)
    np.testing.assert_array_equal(y[0], s[5])
    x, y = make_windows(s, window=5, horizon=3)
    assert y.shape == (5, 3, 2)
    np.testing.assert_array_equal(y[4], s[9:12])
    x, y = make_windows(s, window=5, horizon=3, target_columns=1)
    assert y.shape == (5, 3)
    np.testing.assert_array_equal(y[0], s[5:8, 1])
    x, y = make_windows(s, window=5, target_columns=[1])
    assert y.shape == (7, 1)
    # agrees with timeseries_dataset_from_array used the Keras way
    kx, ky = timeseries_dataset_from_array(s[:-1], s[5:], 5, batch_size=None)
    x, y = make_windows(s, window=5)
    np.testing.assert_array_equal(kx, x)
    np.testing.assert_array_equal(ky, y)


def test_make_windows_bad_input():
    with pytest.raises(ValueError, match="too short"):
        make_windows(np.arange(5.0), window=5)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        make_windows(np.zeros((2, 3, 4)), window=1)
    with pytest.raises(ValueError, match="window"):
        make_windows(np.arange(5.0), window=0)
    with pytest.raises(ValueError, match="out of range"):
        make_windows(np.zeros((10, 2)), window=2, target_columns=5)


def test_pad_sequences():
    seqs = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    out = pad_sequences(seqs)
    np.testing.assert_array_equal(out, [[0, 0, 1, 2, 3], [0, 0, 0, 0, 4], [5, 6, 7, 8, 9]])
    assert out.dtype == np.int32
    out = pad_sequences(seqs, maxlen=4, padding="post", truncating="post", value=-1)
    np.testing.assert_array_equal(out, [[1, 2, 3, -1], [4, -1, -1, -1], [5, 6, 7, 8]])
    out = pad_sequences(seqs, maxlen=2)  # truncating="pre" keeps the ends
    np.testing.assert_array_equal(out, [[2, 3], [0, 4], [8, 9]])
    feats = pad_sequences([np.ones((2, 3)), np.ones((1, 3))], dtype="float32", padding="post")
    assert feats.shape == (2, 2, 3) and feats[1, 1].sum() == 0
    with pytest.raises(ValueError, match="padding"):
        pad_sequences(seqs, padding="middle")
    with pytest.raises(ValueError, match="non-iterable"):
        pad_sequences([1, 2])


def test_to_categorical():
    out = to_categorical([0, 2, 1])
    np.testing.assert_array_equal(out, np.eye(3)[[0, 2, 1]])
    assert out.dtype == np.float32
    assert to_categorical(np.array([[1], [0]]), num_classes=4).shape == (2, 4)
    assert to_categorical(np.zeros((2, 5), int), 3).shape == (2, 5, 3)
    with pytest.raises(ValueError, match="out of range"):
        to_categorical([0, 5], num_classes=3)
    with pytest.raises(ValueError, match="integer"):
        to_categorical([0.5])
    assert utils.__all__


def test_batchify_matches_word_language_model():
    """PyTorch's word_language_model ``batchify``: data.narrow(0, 0, nbatch * bsz)
    .view(bsz, -1).t(), time-major; ours is its transpose."""
    from cylstm.utils import batchify

    series = np.arange(103) * 7
    out = batchify(series, 4)
    assert out.shape == (4, 25)
    nbatch = 103 // 4
    torch_like = series[:nbatch * 4].reshape(4, -1).T  # (nbatch, bsz)
    np.testing.assert_array_equal(out, torch_like.T)
    for b in range(4):
        for t in (0, 11, 24):
            assert out[b, t] == series[b * 25 + t]
    feats = np.random.default_rng(0).standard_normal((50, 3))
    f = batchify(feats, 7)
    assert f.shape == (7, 7, 3)
    np.testing.assert_array_equal(f[2, 5], feats[2 * 7 + 5])
    np.testing.assert_array_equal(batchify(list(range(6)), 6), [[0], [1], [2], [3], [4], [5]])


def test_batchify_against_torch():
    torch = pytest.importorskip("torch", reason="the PyTorch example's own batchify")
    from cylstm.utils import batchify

    data = torch.arange(103) * 7
    ref = data.narrow(0, 0, (103 // 4) * 4).view(4, -1).t().contiguous()  # (nbatch, bsz)
    np.testing.assert_array_equal(batchify(data.numpy(), 4), ref.numpy().T)


def test_batchify_bad_input():
    from cylstm.utils import batchify

    with pytest.raises(ValueError, match="batch_size"):
        batchify(np.arange(3), 4)
    with pytest.raises(ValueError, match="batch_size"):
        batchify(np.arange(3), 0)
    with pytest.raises(TypeError, match="batch_size"):
        batchify(np.arange(3), 1.5)
    with pytest.raises(ValueError, match="series"):
        batchify(np.float64(3.0), 1)
    with pytest.raises(TypeError, match="series"):
        batchify("abc", 1)
