"""The issue's Keras example with only the three imports changed."""
import warnings

import numpy as np


def test_keras_example_runs_with_imports_swapped():
    from cylstm.layers import LSTM, Dense
    from cylstm.models import Sequential
    from cylstm.optimizers import Adam

    rng = np.random.default_rng(0)
    x_train = rng.standard_normal((96, 12, 10)).astype(np.float32)
    y_train = x_train[:, -3:, 0].mean(axis=1, keepdims=True)

    model = Sequential()
    model.add(LSTM(units=50, return_sequences=True, input_shape=(None, 10)))
    model.add(LSTM(units=20))
    model.add(Dense(units=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile(optimizer=Adam(lr=0.001), loss='mean_squared_error')
    assert any(issubclass(w.category, DeprecationWarning) and "learning_rate" in str(w.message)
               for w in caught)
    history = model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)

    losses = history.history["loss"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    pred = model.predict(x_train[:5])
    assert pred.shape == (5, 1) and pred.dtype == np.float32


def test_top_level_imports():
    import cylstm
    from cylstm import LSTM, Dense, Sequential

    assert cylstm.Sequential is Sequential and cylstm.LSTM is LSTM and cylstm.Dense is Dense
