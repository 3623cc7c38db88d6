"""Tests for dpokit.losses: DPO (sigmoid / cDPO) and SFT values, gradients, metrics and the registry.

Every expected number is either derived by hand in the docstring or computed by an independent
implementation written here from the paper's equation (Rafailov et al. 2023, eq. 7).
"""

from __future__ import annotations

import math

import pytest
import torch

from dpokit.config import LossConfig, load_config
from dpokit.errors import UserError
from dpokit.losses import Logps, all_losses, get_loss, register
from dpokit.losses.dpo import dpo_sigmoid
from dpokit.losses.sft import sft_nll


def logps_from_lists(rows: list[list[list[float]]]) -> Logps:
    """Logps (G, B, T) from ragged per-token lists: rows[g][b] = token log-probs; the rest is masked."""
    G, B = len(rows), len(rows[0])
    T = max(len(seq) for group in rows for seq in group)
    tokens = torch.zeros(G, B, T)
    mask = torch.zeros(G, B, T, dtype=torch.bool)
    for g, group in enumerate(rows):
        for b, seq in enumerate(group):
            tokens[g, b, : len(seq)] = torch.tensor(seq)
            mask[g, b, : len(seq)] = True
    return Logps(tokens, mask)


def cfg(beta: float, label_smoothing: float = 0.0) -> LossConfig:
    return LossConfig(name="sigmoid", beta=beta, label_smoothing=label_smoothing)


# ----------------------------------------------------------------------------- DPO by hand

def test_dpo_docstring_example():
    """β = 0.1. Policy sums: chosen −1 (tokens −0.25, −0.75), rejected −2 (tokens −2, padded).
    Reference sums: chosen −1.5, rejected −1.5.
    u = (−1 − (−2)) − (−1.5 − (−1.5)) = 1;  L = −log σ(0.1) = log(1 + e^−0.1) = 0.644397.
    rewards: chosen 0.1·(−1 + 1.5) = 0.05, rejected 0.1·(−2 + 1.5) = −0.05, margin 0.1, accuracy 1.
    """
    policy = logps_from_lists([[[-0.25, -0.75]], [[-2.0]]])
    ref = logps_from_lists([[[-1.5]], [[-0.5, -1.0]]])
    out = dpo_sigmoid(policy, ref, cfg(0.1))
    assert out.losses.shape == (1,)
    assert out.losses.item() == pytest.approx(0.644397, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.05, abs=1e-7)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.05, abs=1e-7)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.1, abs=1e-7)
    assert out.metrics["rewards/accuracies"].item() == 1.0


def test_dpo_docstring_example_label_smoothing():
    """Same pair, ε = 0.2 (cDPO): L = 0.8·log(1 + e^−0.1) + 0.2·log(1 + e^0.1)
    = 0.8·0.644397 + 0.2·0.744397 = 0.515518 + 0.148879 = 0.664397.
    (Equivalently L_ε = L_0 + ε·β·u = 0.644397 + 0.2·0.1 = 0.664397.)
    """
    policy = logps_from_lists([[[-1.0]], [[-2.0]]])
    ref = logps_from_lists([[[-1.5]], [[-1.5]]])
    out = dpo_sigmoid(policy, ref, cfg(0.1, 0.2))
    assert out.losses.item() == pytest.approx(0.664397, abs=1e-6)
    # label smoothing does not change the rewards
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.1, abs=1e-7)


def test_dpo_hand_example_beta_half():
    """β = 0.5, a batch of two pairs.

    Pair 0: policy chosen tokens (−0.5, −1.5) → −2, rejected (−1, −2) → −3;
            reference chosen −2.5, rejected −2.
            u = (−2 − (−3)) − (−2.5 − (−2)) = 1 + 0.5 = 1.5, βu = 0.75
            L = log(1 + e^−0.75) = log(1 + 0.4723666) = 0.386871
            rewards 0.5·(−2 + 2.5) = 0.25 and 0.5·(−3 + 2) = −0.5, margin 0.75, accuracy 1
            with ε = 0.1: L = 0.9·0.386871 + 0.1·log(1 + e^0.75) = 0.348184 + 0.1·1.136871 = 0.461871
    Pair 1: policy chosen −4 (one token), rejected −1 (one token); reference chosen −3, rejected −1.
            u = (−4 − (−1)) − (−3 − (−1)) = −3 + 2 = −1, βu = −0.5
            L = log(1 + e^0.5) = log(2.6487213) = 0.974077
            rewards 0.5·(−1) = −0.5 and 0, margin −0.5, accuracy 0
            with ε = 0.1: L = 0.974077 + 0.1·(−0.5) = 0.924077
    """
    policy = logps_from_lists([[[-0.5, -1.5], [-4.0]], [[-1.0, -2.0], [-1.0]]])
    ref = logps_from_lists([[[-2.5], [-3.0]], [[-2.0], [-1.0]]])
    out = dpo_sigmoid(policy, ref, cfg(0.5))
    torch.testing.assert_close(out.losses, torch.tensor([0.386871, 0.974077]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.metrics["rewards/chosen"], torch.tensor([0.25, -0.5]), atol=1e-7, rtol=0)
    torch.testing.assert_close(out.metrics["rewards/rejected"], torch.tensor([-0.5, 0.0]), atol=1e-7, rtol=0)
    torch.testing.assert_close(out.metrics["rewards/margins"], torch.tensor([0.75, -0.5]), atol=1e-7, rtol=0)
    assert out.metrics["rewards/accuracies"].tolist() == [1.0, 0.0]

    smoothed = dpo_sigmoid(policy, ref, cfg(0.5, 0.1))
    torch.testing.assert_close(smoothed.losses, torch.tensor([0.461871, 0.924077]), atol=1e-6, rtol=0)


def test_dpo_is_stable_for_large_margins():
    """u = ±10 000 with β = 1: L(+) = log(1 + e^−10000) ≈ 0 and L(−) = log(1 + e^10000) ≈ 10 000,
    finite (a naive −log σ would give inf for the second one in fp32)."""
    policy = logps_from_lists([[[0.0], [-10000.0]], [[-10000.0], [0.0]]])
    ref = logps_from_lists([[[0.0], [0.0]], [[0.0], [0.0]]])
    out = dpo_sigmoid(policy, ref, cfg(1.0))
    assert torch.isfinite(out.losses).all()
    assert out.losses[0].item() == pytest.approx(0.0, abs=1e-6)
    assert out.losses[1].item() == pytest.approx(10000.0, rel=1e-6)


# ----------------------------------------------------------------------------- DPO vs a naive implementation

def naive_dpo_value(pc: float, pr: float, rc: float, rr: float, beta: float, eps: float) -> float:
    """Eq. 7 with label smoothing, written with python floats (pc/pr: policy chosen/rejected sums)."""
    z = beta * ((pc - rc) - (pr - rr))
    sig = 1.0 / (1.0 + math.exp(-z))
    return -(1 - eps) * math.log(sig) - eps * math.log(1.0 - sig)


def naive_dpo_torch(raw: torch.Tensor, mask: torch.Tensor, ref_sum: torch.Tensor, beta: float,
                    eps: float) -> torch.Tensor:
    """The same equation as a separate torch graph: masked sums, then −log σ(·) literally."""
    s = (raw * mask).sum(-1)  # (2, B)
    z = beta * ((s[0] - ref_sum[0]) - (s[1] - ref_sum[1]))
    return -(1 - eps) * torch.log(torch.sigmoid(z)) - eps * torch.log(torch.sigmoid(-z))


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2), (0.3, 0.45)])
def test_dpo_matches_naive_values_and_gradients(beta, eps):
    """Random (2, B, T) per-token log-probs with ragged masks; losses and d(sum of losses)/d(token
    log-probs) must agree with the naive formulation to 1e-6 (masked positions get zero gradient)."""
    gen = torch.Generator().manual_seed(1234)
    B, T = 6, 9
    lengths = torch.randint(1, T + 1, (2, B), generator=gen)
    lengths[0, 0], lengths[1, 1] = T, 1  # one full row, one single-token row
    mask = torch.arange(T).expand(2, B, T) < lengths.unsqueeze(-1)
    assert (~mask).any() and mask.any()
    raw = (-torch.rand(2, B, T, generator=gen) * 2.0).requires_grad_(True)
    ref_tokens = (-torch.rand(2, B, T, generator=gen) * 2.0).masked_fill(~mask, 0.0)
    reference = Logps(ref_tokens, mask)

    out = dpo_sigmoid(Logps(raw.masked_fill(~mask, 0.0), mask), reference, cfg(beta, eps))
    (grad_impl,) = torch.autograd.grad(out.losses.sum(), raw)

    # values: python math, one example at a time
    m = mask.double()
    pol = (raw.detach().double() * m).sum(-1)
    ref = (ref_tokens.double() * m).sum(-1)
    expected = [naive_dpo_value(pol[0, b].item(), pol[1, b].item(), ref[0, b].item(), ref[1, b].item(), beta, eps)
                for b in range(B)]
    torch.testing.assert_close(out.losses.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)

    # gradients: a separate torch graph
    raw2 = raw.detach().clone().requires_grad_(True)
    naive = naive_dpo_torch(raw2, mask, ref_tokens.sum(-1), beta, eps)
    (grad_naive,) = torch.autograd.grad(naive.sum(), raw2)
    torch.testing.assert_close(grad_impl, grad_naive, atol=1e-6, rtol=0)
    assert (grad_impl[~mask] == 0).all()
    assert grad_impl[mask].abs().min() > 0


# ----------------------------------------------------------------------------- reward semantics

def test_rewards_are_beta_times_log_ratio_and_detached():
    """β = 0.2. chosen: log π = −3, log π_ref = −4 → reward 0.2·1 = 0.2;
    rejected: log π = −5, log π_ref = −4.5 → reward 0.2·(−0.5) = −0.1; margin 0.3, accuracy 1.
    Rewards are metrics: they must not carry gradient."""
    raw = torch.tensor([[[-1.0, -2.0]], [[-5.0, 0.0]]], requires_grad=True)
    mask = torch.tensor([[[True, True]], [[True, False]]])
    policy = Logps(raw.masked_fill(~mask, 0.0), mask)
    ref = logps_from_lists([[[-4.0]], [[-4.5]]])
    out = dpo_sigmoid(policy, ref, cfg(0.2))
    m = out.metrics
    assert m["rewards/chosen"].item() == pytest.approx(0.2, abs=1e-7)
    assert m["rewards/rejected"].item() == pytest.approx(-0.1, abs=1e-7)
    assert m["rewards/margins"].item() == pytest.approx(0.3, abs=1e-7)
    assert m["rewards/accuracies"].item() == 1.0
    assert set(m) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert all(not v.requires_grad for v in m.values())
    assert out.losses.requires_grad


def test_accuracy_is_strict_a_tie_counts_zero():
    """β = 0.1, four pairs:
    0: policy (−1, −3), ref (−2, −4): rewards 0.1·1 and 0.1·1 → tie → accuracy 0 (loss log 2)
    1: policy (−2, −2), ref (−2, −2): both rewards 0 → tie → accuracy 0
    2: policy (−3, −1), ref (−2, −2): rewards −0.1 and 0.1 → chosen lower → accuracy 0
    3: policy (−1, −3), ref (−2, −2): rewards 0.1 and −0.1 → accuracy 1
    """
    policy = logps_from_lists([[[-1.0], [-2.0], [-3.0], [-1.0]], [[-3.0], [-2.0], [-1.0], [-3.0]]])
    ref = logps_from_lists([[[-2.0], [-2.0], [-2.0], [-2.0]], [[-4.0], [-2.0], [-2.0], [-2.0]]])
    out = dpo_sigmoid(policy, ref, cfg(0.1))
    assert out.metrics["rewards/accuracies"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert out.metrics["rewards/margins"][:2].tolist() == [0.0, 0.0]
    assert out.losses[0].item() == pytest.approx(math.log(2), abs=1e-6)


# ----------------------------------------------------------------------------- SFT

def test_sft_docstring_example():
    """Token log-probs (−1, −2) for example 0 and (−3) for example 1 (G = 1):
    per-example summed NLL = (3, 3); the trainer divides the sum 6 by the token count 3 → 2.
    nll/per_token per example = (3/2, 3/1) = (1.5, 3)."""
    policy = logps_from_lists([[[-1.0, -2.0], [-3.0]]])
    out = sft_nll(policy, None, cfg(0.1))
    assert out.losses.tolist() == [3.0, 3.0]
    assert (out.losses.sum() / policy.count.sum()).item() == 2.0
    assert out.metrics["nll/per_token"].tolist() == [1.5, 3.0]
    assert get_loss("sft").unit == "token"


def test_sft_gradient_is_minus_one_on_completion_tokens():
    """d(Σ_b NLL_b)/d(token log-prob) = −1 on every unmasked token, 0 on masked ones."""
    raw = torch.tensor([[[-1.0, -2.0, -7.0], [-3.0, -9.0, -9.0]]], requires_grad=True)
    mask = torch.tensor([[[True, True, False], [True, False, False]]])
    out = sft_nll(Logps(raw.masked_fill(~mask, 0.0), mask), None, cfg(0.1))
    out.losses.sum().backward()
    assert raw.grad.tolist() == [[[-1.0, -1.0, 0.0], [-1.0, 0.0, 0.0]]]


# ----------------------------------------------------------------------------- registry and config

def test_registry_specs():
    losses = all_losses()
    assert {"sigmoid", "sft"} <= set(losses)
    s, f = losses["sigmoid"], losses["sft"]
    assert (s.name, s.needs_reference, s.input_kind, s.unit, s.has_nll) == ("sigmoid", True, "pair", "example", False)
    assert (f.name, f.needs_reference, f.input_kind, f.unit, f.has_nll) == ("sft", False, "sft", "token", True)
    assert s.fn is dpo_sigmoid and f.fn is sft_nll
    assert get_loss("sigmoid") is s
    assert s.summary.startswith("DPO") and f.summary.startswith("SFT")
    losses.clear()  # all_losses() is a copy: clearing it must not empty the registry
    assert "sigmoid" in all_losses()


def test_get_loss_unknown_lists_known_names():
    with pytest.raises(KeyError) as exc:
        get_loss("nope")
    msg = exc.value.args[0]
    assert "'nope'" in msg
    for name in all_losses():
        assert name in msg


def test_register_duplicate_name_raises_and_keeps_original():
    def impostor(policy, reference, cfg):  # pragma: no cover - never called
        raise AssertionError

    with pytest.raises(ValueError, match="sigmoid"):
        register("sigmoid", needs_reference=False, input_kind="sft")(impostor)
    spec = get_loss("sigmoid")
    assert spec.fn is dpo_sigmoid and spec.needs_reference is True


def test_config_unknown_loss_name_is_user_error():
    base = {"model.path": "m", "data.train": "d"}
    assert load_config(None, {**base, "loss.name": "sigmoid"}).loss.name == "sigmoid"  # control
    with pytest.raises(UserError) as exc:
        load_config(None, {**base, "loss.name": "nope"})
    assert exc.value.field == "loss.name"
    assert "loss.name" in str(exc.value) and "nope" in str(exc.value)
