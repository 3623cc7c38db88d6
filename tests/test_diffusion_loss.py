"""Diffusion-DPO loss (Wallace et al. 2023, eq. 14; the authors' reference code's constants):
hand values, an independent naive implementation on a tiny random denoiser, ln 2 at policy ==
reference, and exact equality with ``sigmoid`` on the same denoising log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from dpokit.config import LossConfig
from dpokit.losses import get_loss
from dpokit.losses.diffusion import denoising_logps, diffusion_dpo
from dpokit.losses.dpo import dpo_sigmoid


def _logps_from_mse(w: float, l: float):
    """Logps whose per-response value is −½·MSE (one element per response, error √(MSE))."""
    pred = torch.tensor([[[math.sqrt(w)]], [[math.sqrt(l)]]])
    return denoising_logps(pred, torch.zeros_like(pred))


def test_hand_values():
    """β = 5000; MSE policy (0.1000, 0.1002), reference (0.11, 0.11):
    inside = −½·5000·((0.1 − 0.1002) − 0) = 0.5; L = log(1 + e^−0.5) = 0.474077;
    rewards 25 and 24.5, margin 0.5, accuracy 1."""
    out = diffusion_dpo(_logps_from_mse(0.1, 0.1002), _logps_from_mse(0.11, 0.11), LossConfig(beta=5000.0))
    assert out.losses.item() == pytest.approx(0.474077, abs=2e-3)  # float32 at β = 5000
    assert out.metrics["rewards/chosen"].item() == pytest.approx(25.0, rel=1e-4)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(24.5, rel=1e-3)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.5, abs=2e-3)
    assert out.metrics["rewards/accuracies"].item() == 1.0


def test_default_beta_is_the_papers():
    assert dict(get_loss("diffusion_dpo").defaults)["beta"] == 5000.0


class TinyDenoiser(torch.nn.Module):
    """A random conv denoiser ε_θ(x_t, t, c): enough to check the arithmetic on real predictions."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.embed = torch.nn.Embedding(10, 1)

    def forward(self, x, t, c):
        return self.conv(x) + self.embed(c)[:, :, None, None] + 0.01 * t[:, None, None, None]


def _naive(policy, ref, x_w, x_l, c, t, noise, alpha_bar, beta):
    """Eq. 14 as the reference code writes it, one pair at a time, in float64."""
    out = []
    for i in range(x_w.shape[0]):
        a = alpha_bar[i]
        errs = []
        for model in (policy, ref):
            for x in (x_w[i:i + 1], x_l[i:i + 1]):
                x_t = a.sqrt() * x + (1 - a).sqrt() * noise[i:i + 1]
                pred = model(x_t, t[i:i + 1], c[i:i + 1]).double()
                errs.append(((pred - noise[i:i + 1].double()) ** 2).mean().item())
        model_diff, ref_diff = errs[0] - errs[1], errs[2] - errs[3]
        inside = -0.5 * beta * (model_diff - ref_diff)
        out.append(math.log1p(math.exp(-inside)))
    return out


def _batched(policy, ref, x_w, x_l, c, t, noise, alpha_bar, beta):
    a = alpha_bar[:, None, None, None]
    x_t = torch.stack([a.sqrt() * x + (1 - a).sqrt() * noise for x in (x_w, x_l)])
    preds = [torch.stack([m(x_t[g], t, c) for g in range(2)]) for m in (policy, ref)]
    target = torch.stack([noise, noise])
    pol, rf = denoising_logps(preds[0], target), denoising_logps(preds[1], target)
    return pol, rf, diffusion_dpo(pol, rf, LossConfig(beta=beta))


def test_matches_naive_and_sigmoid_on_a_random_denoiser():
    torch.manual_seed(0)
    B = 4
    x_w, x_l, noise = torch.randn(B, 1, 8, 8), torch.randn(B, 1, 8, 8), torch.randn(B, 1, 8, 8)
    c, t = torch.randint(0, 10, (B,)), torch.randint(0, 1000, (B,)).float()
    alpha_bar = torch.rand(B) * 0.9 + 0.05
    policy, ref = TinyDenoiser(1), TinyDenoiser(2)
    beta = 20.0  # small enough that the losses are away from 0 and differ pair to pair
    with torch.no_grad():
        pol, rf, out = _batched(policy, ref, x_w, x_l, c, t, noise, alpha_bar, beta)
        expected = _naive(policy, ref, x_w, x_l, c, t, noise, alpha_bar, beta)
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    same = dpo_sigmoid(pol, rf, LossConfig(beta=beta, label_smoothing=0.0))
    torch.testing.assert_close(out.losses, same.losses)
    inside = torch.tensor([math.log(math.expm1(v)) * -1 for v in expected])  # invert log(1+e^−x)
    torch.testing.assert_close(out.metrics["rewards/margins"], inside.float(), rtol=1e-3, atol=1e-3)
    assert out.metrics["rewards/accuracies"].tolist() == [float(v > 0) for v in inside]


def test_policy_equals_reference_gives_ln2():
    torch.manual_seed(1)
    x_w, x_l, noise = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    c, t, alpha_bar = torch.tensor([1, 2, 3]), torch.tensor([10.0, 500.0, 900.0]), torch.tensor([0.9, 0.5, 0.1])
    model = TinyDenoiser(3)
    _, _, out = _batched(model, model, x_w, x_l, c, t, noise, alpha_bar, 5000.0)
    torch.testing.assert_close(out.losses, torch.full((3,), math.log(2)))


def test_gradient_lowers_the_winners_error():
    """One gradient step on the loss lowers L_w − L_l (the direction the paper wants)."""
    torch.manual_seed(2)
    x_w, x_l, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    c, t, alpha_bar = torch.randint(0, 10, (4,)), torch.rand(4) * 1000, torch.full((4,), 0.5)
    policy, ref = TinyDenoiser(4), TinyDenoiser(4)
    pol, _, out = _batched(policy, ref, x_w, x_l, c, t, noise, alpha_bar, 100.0)
    before = (pol.sum[0] - pol.sum[1]).sum().item()
    out.losses.mean().backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 1e-3 * p.grad
        pol2, _, _ = _batched(policy, ref, x_w, x_l, c, t, noise, alpha_bar, 100.0)
    assert (pol2.sum[0] - pol2.sum[1]).sum().item() > before
