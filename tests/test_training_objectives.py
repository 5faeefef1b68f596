"""Each objective's loss equals a direct float64 transcription of its reference definition (values and gradients),
and the objectives' state (EMA target, correlation estimate) behaves and resumes exactly."""
import math

import numpy as np
import pytest
import torch

from training import objectives
from training.config import ConfigError, apply_overrides, load_recipe
from training.model import build_network
from training.objectives import Views, get
from training.objectives.barlow_twins import barlow_twins_loss
from training.objectives.byol import ema_rate, regression_loss
from training.objectives.directpred import predictor_from_correlation
from training.objectives.simclr import nt_xent
from training.objectives.simsiam import negative_cosine
from training.objectives.vicreg import vicreg_loss

TOLERANCE = 1e-6


def views(n=12, d=10, seed=0):
    """Two correlated float64 views that require gradients."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 1
    z2 = 0.7 * z1 + torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1.requires_grad_(), z2.requires_grad_()


def same_value_and_gradients(ours, reference, inputs):
    """ours(*inputs) and reference(*inputs) agree in value and in the gradient w.r.t. every input."""
    mine = ours(*inputs)
    mine_grads = torch.autograd.grad(mine, inputs, allow_unused=True)
    theirs = reference(*inputs)
    their_grads = torch.autograd.grad(theirs, inputs, allow_unused=True)
    assert mine.dtype == torch.float64 and abs(float(mine.detach()) - float(theirs.detach())) <= TOLERANCE
    for a, b in zip(mine_grads, their_grads):
        if b is None:
            assert a is None or not a.any()
        else:
            assert float((a - b).abs().max()) <= TOLERANCE


def off_diagonal(m):
    return m - torch.diag(torch.diagonal(m))


# Direct transcriptions of the reference definitions, one process, float64.

def barlow_twins_reference(z1, z2, lambd=0.0051):
    """The official main.py: BatchNorm1d(affine=False) (biased variance, eps 1e-5), c = bn(z1)ᵀ bn(z2) / N."""
    def bn(z):
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
    c = bn(z1).T @ bn(z2) / len(z1)
    return (torch.diagonal(c) - 1).pow(2).sum() + lambd * off_diagonal(c).pow(2).sum()


def vicreg_reference(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """main_vicreg.py's VICReg.forward after the projector, with one process."""
    n, d = x.shape
    repr_loss = ((x - y) ** 2).mean()
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(torch.relu(1 - std_x)) / 2 + torch.mean(torch.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)
    cov_loss = off_diagonal(cov_x).pow(2).sum() / d + off_diagonal(cov_y).pow(2).sum() / d
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def nt_xent_reference(z1, z2, temperature):
    """The SimCLR paper's NT-Xent: views 2k and 2k+1 are a pair; ℓ(i, j) summed over all 2N anchors / 2N."""
    z = torch.stack([z1, z2], dim=1).reshape(-1, z1.shape[1])  # z1[0], z2[0], z1[1], z2[1], ...

    def sim(u, v):
        return u @ v / (u.norm() * v.norm())

    total = 0
    for i in range(len(z)):
        j = i + 1 if i % 2 == 0 else i - 1
        denominator = sum(torch.exp(sim(z[i], z[k]) / temperature) for k in range(len(z)) if k != i)
        total = total - torch.log(torch.exp(sim(z[i], z[j]) / temperature) / denominator)
    return total / len(z)


def byol_reference(p, z):
    """The BYOL paper: ‖p̄ − z̄‖² with z̄ = sg(z)/‖z‖, averaged over the batch."""
    z = z.detach()
    return ((p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()


def simsiam_reference(p, z):
    """The SimSiam paper: D(p, z) = −(p/‖p‖₂)·(z/‖z‖₂) with z = stopgrad(z), averaged over the batch."""
    z = z.detach()
    return -((p / p.norm(dim=1, keepdim=True)) * (z / z.norm(dim=1, keepdim=True))).sum(1).mean()


@pytest.mark.parametrize("ours, reference", [
    (lambda a, b: barlow_twins_loss(a, b)[0], barlow_twins_reference),
    (lambda a, b: vicreg_loss(a, b)[0], vicreg_reference),
    (lambda a, b: vicreg_loss(a, b, 10.0, 3.0, 0.5)[0], lambda a, b: vicreg_reference(a, b, 10.0, 3.0, 0.5)),
    (lambda a, b: nt_xent(a, b, 0.1), lambda a, b: nt_xent_reference(a, b, 0.1)),
    (lambda a, b: nt_xent(a, b, 0.5), lambda a, b: nt_xent_reference(a, b, 0.5)),
    (regression_loss, byol_reference),
    (negative_cosine, simsiam_reference),
], ids=["barlow_twins", "vicreg", "vicreg-coeffs", "nt_xent-0.1", "nt_xent-0.5", "byol", "simsiam"])
def test_loss_equals_the_reference_in_float64(ours, reference):
    same_value_and_gradients(ours, reference, views())


def test_vicreg_variance_term_is_active_and_parts_are_the_unweighted_terms():
    """A small spread puts the variance hinge to work (views() are wide), and the parts add up to the loss."""
    z1, z2 = views()
    small = (z1 * 0.1, z2 * 0.1)
    same_value_and_gradients(lambda a, b: vicreg_loss(a, b)[0], vicreg_reference, small)
    loss, parts = vicreg_loss(*small)
    assert parts["variance"] > 0.5
    assert float(loss.detach()) == pytest.approx(float(25 * parts["invariance"] + 25 * parts["variance"]
                                                       + parts["covariance"]))


def test_simclr_parts_describe_the_contrastive_task():
    z1, z2 = views()
    loss, parts = get("simclr").loss(Views(z=(z1, z2)))
    assert float(loss.detach()) == pytest.approx(float(nt_xent(z1, z2, 0.1).detach()))
    u1, u2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    assert float(parts["positive_cos"]) == pytest.approx(float((u1 * u2).sum(1).mean().detach()))
    assert 0 <= float(parts["top1"]) <= 1 and -1 <= float(parts["negative_cos"]) <= 1


def test_predictor_from_correlation_is_the_authors_formula():
    g = np.random.default_rng(0)
    f = g.normal(size=(200, 6)) @ g.normal(size=(6, 6))
    F = f.T @ f / len(f)
    s, U = np.linalg.eigh(F)
    want = U @ np.diag(np.sqrt(np.clip(s, 0, None) / s.max()) + 0.01) @ U.T
    got = predictor_from_correlation(torch.from_numpy(F), eps=0.01).numpy()
    assert np.abs(got - want).max() <= TOLERANCE
    assert np.abs(got @ F - F @ got).max() <= TOLERANCE  # W shares F's eigenbasis
    assert np.linalg.eigvalsh(got).max() == pytest.approx(1.01)  # the top direction gets √1 + ε


def tiny_network(name, **settings):
    """A cpu-tiny network with the objective's head, the objective attached to it."""
    config = apply_overrides(load_recipe("cpu-tiny"), ["projector=[16, 8]"])
    objective = get(name, **settings)
    torch.manual_seed(0)
    network = build_network(config, head=objective.head(config.embedding_dim))
    objective.attach(network)
    return network, objective


def images(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)


def test_byol_target_is_an_ema_of_the_online_network_on_the_cosine_schedule():
    assert ema_rate(0.996, 0, 100) == pytest.approx(0.996) and ema_rate(0.996, 100, 100) == 1.0
    assert ema_rate(0.996, 50, 100) == pytest.approx(1 - 0.004 / 2)
    network, byol = tiny_network("byol")
    online = network.projector[0].weight
    assert torch.equal(byol.target.projector[0].weight, online) and not byol.target.projector[0].weight.requires_grad
    before = byol.target.projector[0].weight.clone()
    with torch.no_grad():
        online.add_(1.0)  # as if an optimizer step had moved the online network
    byol.after_step(network, 25, 100)
    tau = ema_rate(0.996, 25, 100)
    assert torch.allclose(byol.target.projector[0].weight, tau * before + (1 - tau) * online.detach(), atol=1e-6)
    x = images()
    z, p, _ = network(*x)
    loss, parts = byol.loss(Views(z=z, p=p, inputs=x))
    assert float(parts["tau"]) == pytest.approx(tau)
    loss.backward()
    assert all(q.grad is None for q in byol.target.parameters())  # the target gets no gradient
    assert network.head[0].weight.grad is not None  # the predictor does


def test_directpred_sets_its_predictor_from_the_running_correlation():
    network, directpred = tiny_network("directpred", rho=0.3, eps=0.01)
    assert network.head is None and torch.equal(directpred.weight, torch.eye(8))
    estimates = []
    for step, seed in ((1, 1), (2, 2)):
        x = images(seed=seed)
        z, p, _ = network(*x)
        directpred.loss(Views(z=z, p=p, inputs=x))[0].backward()
        f = torch.cat([z[0], z[1]]).detach()
        estimates.append(f.T @ f / len(f))
        directpred.after_step(network, step, 10)
    want = 0.3 * estimates[0] + 0.7 * estimates[1]  # the first batch sets F, then F ← ρF + (1 − ρ) E[ffᵀ]
    assert torch.allclose(directpred.correlation, want, atol=1e-5)
    assert torch.allclose(directpred.weight, predictor_from_correlation(want, 0.01), atol=1e-4)
    assert int(directpred.updates) == 2


def test_objectives_registry_and_settings():
    assert objectives.MEMBERS == ("barlow_twins", "vicreg", "simclr", "byol", "simsiam", "directpred")
    defaults = {name: get(name).settings_dict() for name in objectives.MEMBERS}
    assert defaults["vicreg"] == {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0}
    assert defaults["simclr"] == {"temperature": 0.1}
    assert defaults["byol"] == {"tau_base": 0.996, "predictor_hidden": 4096}
    assert defaults["directpred"] == {"rho": 0.3, "eps": 0.01, "freq": 1, "tau_base": 0.996}
    _, simsiam = tiny_network("simsiam")
    network = build_network(load_recipe("cpu-default"), head=simsiam.head(2048))
    assert [m.out_features for m in network.head if isinstance(m, torch.nn.Linear)] == [512, 2048]
    assert network.head[0].bias is None
    config = apply_overrides(load_recipe("cpu-tiny"), ["objective=vicreg", "objective.sim_coeff=10"])
    assert config.objective == {"name": "vicreg", "sim_coeff": 10.0, "std_coeff": 25.0, "cov_coeff": 1.0}
    for overrides, message in ((["objective=simclr", "objective.temperature=0"], "temperature must be more than 0"),
                               (["objective=directpred", "objective.rho=2"], "rho must be between 0 and 1")):
        with pytest.raises(ConfigError, match=f"objective.{message}"):
            apply_overrides(load_recipe("cpu-tiny"), overrides)
    with pytest.raises(ConfigError, match="local_crops works with the objectives barlow_twins, vicreg, not byol"):
        apply_overrides(load_recipe("cpu-tiny"), ["objective=byol", "local_crops=2"])


@pytest.mark.parametrize("name", ["byol", "directpred"])
def test_resume_is_bit_exact_with_the_objectives_state(name, tmp_path):
    """4 steps in one go = 2 steps, a new process's worth of Trainer, 2 more: network, target and F identical."""
    from PIL import Image

    from training.checkpoint import load_checkpoint
    from training.loop import fit

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(data / f"{i}.png")
    config = apply_overrides(load_recipe("cpu-tiny"), [f"objective={name}", "projector=[16, 8]", "num_workers=0",
                                                       "objective.predictor_hidden=32" if name == "byol" else
                                                       "objective.freq=1"])
    fit(config, data, tmp_path / "straight", device="cpu", progress=False)
    fit(config.replace(max_steps=2), data, tmp_path / "resumed", device="cpu", progress=False)
    assert load_checkpoint(tmp_path / "resumed")["step"] == 2
    fit(config, data, tmp_path / "resumed", device="cpu", progress=False)
    straight, resumed = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert straight["step"] == resumed["step"] == 4
    for part in ("model", "objective"):
        assert straight[part].keys() == resumed[part].keys()
        for key, value in straight[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
    assert any(k.startswith("target.") for k in resumed["objective"])
    if name == "directpred":
        assert int(resumed["objective"]["updates"]) == 4 and resumed["objective"]["correlation"].abs().sum() > 0
    assert math.isfinite(resumed["metrics"]["loss"])


def test_vicreg_pairs_multi_crop_views_like_barlow_twins():
    z1, z2 = (v.detach() for v in views())
    small = (0.5 * z1 + 0.1, z2 - 0.2)
    loss, parts = get("vicreg").loss(Views(z=(z1, z2, *small)))
    pairs = [(z1, z2)] + [(s, z) for s in small for z in (z1, z2)]
    assert float(loss) == pytest.approx(np.mean([float(vicreg_reference(a, b)) for a, b in pairs]), rel=1e-9)
    assert float(parts["invariance"]) == pytest.approx(float(((z1 - z2) ** 2).mean()), rel=1e-9)
