"""Parity with torch.nn.LSTM (outputs and autograd gradients), converted weights."""
import numpy as np
import pytest

from cylstm.functional import lstm_backward, lstm_forward

torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests skipped")


def _module(I, H, dtype, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.LSTM(I, H, batch_first=True).to(dtype)
    return m


def _weights(m):
    W = m.weight_ih_l0.detach().numpy().T.copy()
    U = m.weight_hh_l0.detach().numpy().T.copy()
    b = (m.bias_ih_l0 + m.bias_hh_l0).detach().numpy().copy()
    return W, U, b


@pytest.mark.parametrize("tdtype,ndtype,tol", [(torch.float64, np.float64, 1e-10),
                                               (torch.float32, np.float32, 2e-5)])
@pytest.mark.parametrize("packed", [False, True])
def test_outputs_and_gradients_match_torch(tdtype, ndtype, tol, packed):
    B, T, I, H = 6, 9, 5, 7
    m = _module(I, H, tdtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I)).astype(ndtype)
    h0, c0 = (rng.standard_normal((B, H)).astype(ndtype) * 0.5 for _ in range(2))
    lengths = np.array([9, 3, 5, 9, 1, 7]) if packed else None
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    c0t = torch.tensor(c0[None], requires_grad=True)
    if packed:
        seq = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                      batch_first=True, enforce_sorted=False)
        ys, (hn, cn) = m(seq, (h0t, c0t))
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(ys, batch_first=True, total_length=T)
    else:
        yt, (hn, cn) = m(xt, (h0t, c0t))
    dy = rng.standard_normal((B, T, H)).astype(ndtype)
    dh = rng.standard_normal((B, H)).astype(ndtype)
    (yt * torch.tensor(dy)).sum().add((hn[0] * torch.tensor(dh)).sum()).backward()

    W, U, b = _weights(m)
    out = lstm_forward(x, W, U, b, initial_state=(h0, c0), lengths=lengths, training=True)
    np.testing.assert_allclose(out.output, yt.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(out.h, hn[0].detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(out.c, cn[0].detach().numpy(), rtol=tol, atol=tol)
    g = lstm_backward(out.cache, dy, dh)
    gtol = {"rtol": tol * 10, "atol": tol * 10}
    np.testing.assert_allclose(g.dx, xt.grad.numpy(), **gtol)
    np.testing.assert_allclose(g.dkernel, m.weight_ih_l0.grad.numpy().T, **gtol)
    np.testing.assert_allclose(g.drecurrent_kernel, m.weight_hh_l0.grad.numpy().T, **gtol)
    np.testing.assert_allclose(g.dbias, m.bias_ih_l0.grad.numpy(), **gtol)
    np.testing.assert_allclose(g.dh0, h0t.grad[0].numpy(), **gtol)
    np.testing.assert_allclose(g.dc0, c0t.grad[0].numpy(), **gtol)


def test_reverse_direction_matches_torch_bidirectional():
    """go_backwards + lengths == the backward half of a packed bidirectional LSTM."""
    B, T, I, H = 4, 6, 3, 5
    torch.manual_seed(1)
    m = torch.nn.LSTM(I, H, batch_first=True, bidirectional=True).double()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, I))
    lengths = np.array([6, 2, 4, 5])
    seq = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), torch.tensor(lengths),
                                                  batch_first=True, enforce_sorted=False)
    ys, (hn, _cn) = m(seq)
    yt, _ = torch.nn.utils.rnn.pad_packed_sequence(ys, batch_first=True, total_length=T)
    W = m.weight_ih_l0_reverse.detach().numpy().T
    U = m.weight_hh_l0_reverse.detach().numpy().T
    b = (m.bias_ih_l0_reverse + m.bias_hh_l0_reverse).detach().numpy()
    out = lstm_forward(x, W, U, b, lengths=lengths, go_backwards=True)
    np.testing.assert_allclose(out.output, yt[..., H:].detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.h, hn[1].detach().numpy(), rtol=1e-10, atol=1e-12)
