"""Two gloo processes under torchrun compute the same losses and gradients as one process on the whole batch, for
every objective (and its state after a step: EMA target, correlation estimate, predictor)."""
import os
import sys
from pathlib import Path

import pytest
import torch

from training.objectives import Views, get

sys.path.insert(0, str(Path(__file__).parent))
from training_dist_worker import (PROJECTION_LOSSES, fixed_batch, images, objective_step, small_view,  # noqa: E402
                                  tiny_net, tiny_twin)
from training.objectives import MEMBERS  # noqa: E402
from conftest import run_torchrun  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def bt_loss(*z):
    """The Barlow Twins loss of the views' projections (the large pair, then small views)."""
    return get("barlow_twins", lambd=0.0051).loss(Views(z=z))[0]


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "training_dist_worker.py"), str(out)]
    # run_torchrun: own session, SIGTERM first on timeout (workers also exit with their parent).
    code, stderr = run_torchrun(cmd, REPO, env, 300)
    assert code == 0, stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_loss_and_grads_match_single_process(two_ranks):
    z1, z2 = fixed_batch()
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = bt_loss(a, b)
    loss.backward()
    for r in two_ranks:
        assert r["world"] == 2
        assert rel_err(r["loss"], loss.detach()) <= 1e-5
        s = slice(*r["part"])
        assert rel_err(r["grad_z1"], a.grad[s]) <= 1e-5
        assert rel_err(r["grad_z2"], b.grad[s]) <= 1e-5


def test_multi_crop_loss_and_grads_match_single_process(two_ranks):
    z1, z2 = fixed_batch()
    views = [z.clone().requires_grad_() for z in (z1, z2, small_view(z1))]
    loss = bt_loss(*views)
    loss.backward()
    for r in two_ranks:
        assert rel_err(r["multi_crop_loss"], loss.detach()) <= 1e-5
        s = slice(*r["part"])
        for got, view in zip(r["multi_crop_grads"], views):
            assert rel_err(got, view.grad[s]) <= 1e-5


def test_ddp_parameter_grads_are_the_true_gradient(two_ranks):
    """Global BatchNorm + the loss's reductions + loss x world size under DDP = single-process gradients."""
    net = tiny_net()
    x1, x2 = images()
    loss = bt_loss(*net(x1, x2))
    loss.backward()
    for r in two_ranks:
        assert rel_err(r["model_loss"], loss.detach()) <= 1e-5
        for name, p in net.named_parameters():
            assert rel_err(r["param_grads"][name], p.grad) <= 1e-5, name
        state = net.state_dict()
        for name, value in r["running"].items():
            assert rel_err(value.float(), state[name].float()) <= 1e-5, name


@pytest.mark.parametrize("name", list(PROJECTION_LOSSES))
def test_projection_losses_match_single_process_on_an_uneven_split(two_ranks, name):
    """5 rows on one rank, 11 on the other: global statistics, gathered negatives and means see 16 rows."""
    z1, z2 = fixed_batch()
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = PROJECTION_LOSSES[name](a, b)
    loss.backward()
    for r in two_ranks:
        got, s = r["projection_losses"][name], slice(*r["uneven"])
        assert rel_err(got["loss"], loss.detach()) <= 1e-5
        assert rel_err(got["grads"][0], a.grad[s]) <= 1e-5
        if b.grad is None:  # BYOL's and SimSiam's target side is detached
            assert got["grads"][1] is None
        else:
            assert rel_err(got["grads"][1], b.grad[s]) <= 1e-5


@pytest.mark.parametrize("name", MEMBERS)
def test_each_objectives_ddp_step_equals_the_single_process_step(two_ranks, name):
    """Loss, parts, every parameter gradient (trunk, projector, head) and the objective's state after the step."""
    network, objective = tiny_twin(name)
    objective.attach(network)
    want = objective_step(network, objective, *images())
    for r in two_ranks:
        got = r["steps"][name]
        assert rel_err(got["loss"], want["loss"]) <= 1e-5
        assert got["parts"].keys() == want["parts"].keys()
        for k, v in want["parts"].items():
            assert rel_err(got["parts"][k].double(), v.double()) <= 1e-5, k
        assert got["grads"].keys() == want["grads"].keys()
        # A gradient that is zero in exact arithmetic (e.g. a bias before a BatchNorm) is float32 noise on both
        # sides: those are compared to the network's largest gradient instead of their own.
        largest = max(float(v.abs().max()) for v in want["grads"].values())
        for k, v in want["grads"].items():
            assert float((got["grads"][k] - v).abs().max()) <= max(1e-5 * float(v.abs().max()), 1e-6 * largest), k
        assert got["state"].keys() == want["state"].keys()
        for k, v in want["state"].items():
            assert rel_err(got["state"][k].double(), v.double()) <= 1e-5, k
