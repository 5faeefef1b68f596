"""Two gloo processes under torchrun compute the same loss and gradients as one process on the whole batch."""
import os
import sys
from pathlib import Path

import pytest
import torch

from training.objectives import Views, get

sys.path.insert(0, str(Path(__file__).parent))
from training_dist_worker import fixed_batch, images, small_view, tiny_net  # noqa: E402
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
