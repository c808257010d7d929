"""The conditional DDPM: the schedule's closed forms, training, EMA, DDIM sampling and
conditioning."""

import math

import numpy as np
import pytest
import torch

from porevox.models import diffusion as d


def blobs(density: float, n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """Binary random-blob images with a given copper fraction."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.standard_normal((n, size, size)), (0, 1.5, 1.5))
    return np.stack([fi > np.quantile(fi, 1 - density) for fi in f]).astype(np.uint8)


def test_alpha_bar_is_the_product_of_one_minus_beta():
    s = d.Schedule(1000, 1e-4, 0.02)
    np.testing.assert_allclose(s.betas, [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)])
    for t in (0, 1, 10, 500, 999):
        assert s.alpha_bar[t] == pytest.approx(math.prod(1 - b for b in s.betas[:t + 1]), rel=1e-12)
    assert s.alpha_bar[-1] == pytest.approx(4.04e-5, rel=0.01)        # Ho et al.'s schedule end


@pytest.mark.parametrize("t", [0, 20, 300])
def test_q_sample_equals_the_chain_of_single_steps(t):
    """x_t from the closed form has the distribution of t + 1 single noising steps
    x_s = √(1 − β_s) x_{s−1} + √β_s ε."""
    s = d.Schedule(1000)
    n = 200_000
    g = torch.Generator().manual_seed(3)
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    closed = s.q_sample(x0, torch.full((n,), t), torch.randn(n, 1, generator=g, dtype=torch.float64))
    x = x0.clone()
    for b in s.betas[:t + 1]:
        x = math.sqrt(1 - b) * x + math.sqrt(b) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    mean, var = math.sqrt(s.alpha_bar[t]) * 0.7, 1 - s.alpha_bar[t]
    for sample in (closed, x):
        assert float(sample.mean()) == pytest.approx(mean, abs=5 * math.sqrt(var / n) + 1e-12)
        assert float(sample.var()) == pytest.approx(var, rel=0.02, abs=1e-6)


def small(**kw):
    cfg = d.DiffusionConfig(image_size=16, base=16, mults=(1, 2), timesteps=200, **kw)
    torch.manual_seed(0)
    return d.ConditionalUNet(cfg), d.Schedule(cfg.timesteps)


def test_training_reduces_the_loss_on_a_fixed_batch():
    model, sched = small()
    x = d.to_signed(blobs(0.5, 32))
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, sched.timesteps, (32,), generator=g)
    noise = torch.randn(x.shape, generator=g)

    def fixed_loss():
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(model(sched.q_sample(x, t, noise), t), noise))

    before = fixed_loss()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(60):
        loss = d.loss(model, sched, x, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before == pytest.approx(1.0, abs=0.05)        # zero-initialised head: predicts 0
    assert fixed_loss() < 0.5 * before


def test_ema_is_the_moving_average():
    model, _ = small()
    ema = d.EMA(model, decay=0.9)
    old = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, v in ema.model.state_dict().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, 0.9 * old[k] + 0.1 * model.state_dict()[k])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_is_deterministic_for_a_seed_with_the_right_shape_and_range(eta):
    model, sched = small(n_classes=3)
    a = d.ddim_sample(model, sched, 5, labels=1, steps=8, seed=4, eta=eta)
    b = d.ddim_sample(model, sched, 5, labels=1, steps=8, seed=4, eta=eta)
    c = d.ddim_sample(model, sched, 5, labels=1, steps=8, seed=5, eta=eta)
    other = d.ddim_sample(model, sched, 5, labels=1, steps=8, seed=4, eta=1.0 - eta)
    assert not torch.equal(a, other)
    assert a.shape == (5, 1, 16, 16) and float(a.min()) >= -1 and float(a.max()) <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    binary = d.to_binary(a)
    assert binary.dtype == np.uint8 and set(np.unique(binary)) <= {0, 1}
    guided = d.ddim_sample(model, sched, 5, labels=1, steps=8, seed=4, guidance=3.0)
    assert guided.shape == a.shape


@pytest.mark.parametrize("t", [1, 30, 150])
def test_a_ddim_step_with_eta_one_is_the_ancestral_step(t):
    """Between consecutive steps, η = 1 gives Ho et al.'s posterior q(x_{t−1} | x_t, x̂_0):
    mean (√ᾱ_{t−1} β_t x̂_0 + √α_t (1 − ᾱ_{t−1}) x_t) / (1 − ᾱ_t), variance
    β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t); η = 0 adds no noise."""
    sched = d.Schedule(200)
    a_t, a_prev, beta = sched.alpha_bar[t], sched.alpha_bar[t - 1], sched.betas[t]
    g = torch.Generator().manual_seed(t)
    x, eps = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64), \
        torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
    mean = (math.sqrt(a_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - a_prev) * x) / (1 - a_t)
    var = beta * (1 - a_prev) / (1 - a_t)
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    torch.testing.assert_close(d.ddim_step(x, eps, a_t, a_prev, 1.0, zero), mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d.ddim_step(x, eps, a_t, a_prev, 1.0, one) - mean,
                               torch.full_like(x, math.sqrt(var)), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d.ddim_step(x, eps, a_t, a_prev, 0.0, one),
                               d.ddim_step(x, eps, a_t, a_prev, 0.0, None), rtol=0, atol=0)


def test_conditioning_changes_the_output():
    """Two very different classes (copper fraction 0.2 and 0.8), a short training:
    the classes' samples differ in mean density the same way."""
    model, sched = small(n_classes=2)
    x = d.to_signed(np.r_[blobs(0.2, 64, seed=1), blobs(0.8, 64, seed=2)])
    y = torch.as_tensor(np.r_[np.zeros(64, int), np.ones(64, int)])
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    ema = d.EMA(model, 0.99)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, 128, (32,), generator=g)
        loss = d.loss(model, sched, x[idx], y[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
    density = [d.to_binary(d.ddim_sample(ema.model, sched, 32, labels=c, steps=20, guidance=2.0,
                                         seed=1)).mean() for c in (0, 1)]
    assert density[1] - density[0] > 0.15, density


def test_a_missing_or_dropped_condition_is_the_null_one():
    """Class and value each have their own null: leaving one out (None) equals
    dropping it (keep False), and differs from giving it."""
    model, sched = small(n_classes=3, continuous=True)
    with torch.no_grad():                       # the zero-initialised head hides the embedding
        torch.nn.init.normal_(model.out[0].weight, std=0.1)
    x = d.to_signed(blobs(0.5, 4))
    t = torch.full((4,), 50)
    labels, values = torch.tensor([0, 1, 2, 0]), torch.tensor([0.1, 0.5, 0.9, 1.3])
    no = torch.zeros(4, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, None, values), model(x, t, labels, values, no, None))
        torch.testing.assert_close(model(x, t, labels, None), model(x, t, labels, values, None, no))
        torch.testing.assert_close(model(x, t), model(x, t, labels, values, no, no))
        assert not torch.allclose(model(x, t, labels, values), model(x, t))
    assert d.loss(model, sched, x, labels, values).dim() == 0
    out = d.ddim_sample(model, sched, 2, values=0.5, steps=4, seed=0, guidance=2.0)
    assert out.shape == (2, 1, 16, 16)


def test_bad_inputs():
    model, _ = small(n_classes=2)
    with pytest.raises(ValueError, match="multiple of 2"):
        model(torch.zeros(1, 1, 15, 16), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="beta_start < beta_end"):
        d.Schedule(10, 0.1, 0.01)


def test_config_round_trip():
    cfg = d.DiffusionConfig(n_classes=18, mults=(1, 2, 4))
    assert d.DiffusionConfig.from_dict(cfg.as_dict()) == cfg


def test_multiscale_mse():
    """One scale is the plain MSE; each coarser term is k·avgpool_k of the error, so
    white noise weighs the same (≈ 1) at every scale; a constant offset c, which is
    c² at full resolution, weighs k²c² at scale k."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 1, 32, 32, generator=g), torch.randn(64, 1, 32, 32, generator=g)
    assert float(d.multiscale_mse(a, b, 1)) == pytest.approx(float(torch.nn.functional.mse_loss(a, b)))
    white = torch.randn(256, 1, 32, 32, generator=g) / math.sqrt(2)
    for scales in (2, 3, 4):
        assert float(d.multiscale_mse(white, torch.zeros_like(white), scales)) == pytest.approx(0.5, rel=0.05)
    offset = torch.full((2, 1, 32, 32), 0.1)
    expected = np.mean([(k * 0.1) ** 2 for k in (1, 2, 4)])
    assert float(d.multiscale_mse(offset, torch.zeros_like(offset), 3)) == pytest.approx(expected, rel=1e-5)
    assert float(d.multiscale_mse(offset, torch.zeros_like(offset), 20)) == pytest.approx(  # stops at 1 × 1
        np.mean([(k * 0.1) ** 2 for k in (1, 2, 4, 8, 16, 32)]), rel=1e-4)


@pytest.mark.parametrize("refine", [0, 8])
def test_a_patched_network_keeps_the_image_size(refine):
    """Pixel-unshuffled by 4 and two levels below that: sizes must be multiples of 8;
    the output has the input's shape (with or without the full-resolution block), and
    a zero-initialised output layer gives 0."""
    model, _ = small(patch=4, refine=refine)
    assert model.stride == 8
    x = torch.randn(3, 1, 24, 24)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 5, 100]))
    assert out.shape == x.shape and float(out.abs().max()) == 0.0
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.zeros(1, 1, 20, 20), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("net, steps", [({}, 60), ({"patch": 2, "refine": 8}, 150)])
def test_the_preconditioned_network_starts_at_the_best_linear_guess(net, steps):
    """ε_θ = √(1−ᾱ_t)·x_t + √ᾱ_t·F with F zero at initialisation: for x_0 in {−1, +1}
    the expected loss at step t is then ᾱ_t, the variance left after the best linear
    guess of ε from x_t; training lowers it (also through the full-resolution block)."""
    model, sched = small(precondition=True, **net)
    x = d.to_signed(blobs(0.5, 64))
    g = torch.Generator().manual_seed(2)
    for t in (5, 60, 199):
        tt = torch.full((64,), t)
        noise = torch.randn(x.shape, generator=g)
        xt = sched.q_sample(x, tt, noise)
        with torch.no_grad():
            pred = model(xt, tt)
        torch.testing.assert_close(pred, math.sqrt(1 - sched.alpha_bar[t]) * xt)
        assert float(((pred - noise) ** 2).mean()) == pytest.approx(sched.alpha_bar[t], rel=0.05)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    fixed = (torch.full((64,), 20), torch.randn(x.shape, generator=g))

    def fixed_loss():
        with torch.no_grad():
            return float(((model(sched.q_sample(x, fixed[0], fixed[1]), fixed[0]) - fixed[1]) ** 2).mean())

    before = fixed_loss()
    for _ in range(steps):
        loss = d.loss(model, sched, x[torch.randint(0, 64, (32,), generator=g)], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.5 * before
