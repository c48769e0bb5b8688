"""Multi-process training (DDP, gloo on CPU) gives the single-process checkpoints.

Two processes with a global batch of 4 (2 images each) and one process with a batch of 4
see the same seeded batches (rank r takes batch[r::2]), average the same gradients (InCTRL's
BatchNorm on global-batch statistics) and write the same files. Tiny smoke models, 2 steps each.

Stated tolerance. AnomalyCLIP: every step's loss to 1e-5 (relative) and epoch_1.pth entry by
entry to TOLERANCE. InCTRL: the first step's loss to 1e-5 (its gradients agree to ~1e-5 of their
size), but Adam divides each gradient by its own magnitude, so entries whose gradient is at
rounding level take steps that rounding decides - in a single run too - and BatchNorm over a
4-image batch amplifies that. So checkpoint_1.pyth is held to what training did: for every
trained tensor the 2-process update (checkpoint minus initial weights) is within
UPDATE_TOLERANCE (relative L2) of the 1-process update (measured worst: 0.09), except the
biases feeding a BatchNorm (``projection1.bias``: gradient zero up to rounding), and the
second step's loss to 1e-3.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zsadlab import engine
from zsadlab.data import ensure_dataset
from zsadlab.profiles import get_profile

TOLERANCE = dict(rtol=1e-4, atol=1e-5)
UPDATE_TOLERANCE = 0.25
ROUNDING_LEVEL_GRADIENT = ("diff_head.projection1.bias", "diff_head_ref.projection1.bias")
RUNS = {"anomalyclip": ("epoch_1.pth", "prompt_learner", True), "inctrl": ("checkpoint_1.pyth", "model_state", False)}


def train_both(root, out_dir) -> dict:
    """Train AnomalyCLIP and InCTRL for one epoch of 2 steps of 4 images into ``out_dir/<method>``."""
    histories = {}
    for method, (_, _, masks) in RUNS.items():
        model = engine.build_model(method, get_profile("smoke", quiet=True), device="cpu")
        data = engine.dataset_for(model, root, require_masks=masks)
        options = {"max_steps_per_epoch": 2} if masks else {"steps_per_epoch": 2}
        histories[method] = engine.train(model, data, epochs=1, batch_size=4, out_dir=out_dir / method,
                                         progress=False, **options)
    return histories


def initial_state(method: str, keys) -> dict:
    """The checkpoint entries of the freshly built model (same seed as the runs)."""
    model = engine.build_model(method, get_profile("smoke", quiet=True), device="cpu")
    if method == "anomalyclip":
        state = {k.removeprefix("prompt_learner."): v for k, v in model.state_dict().items()}
    else:
        from zsadlab.inctrl import official_state_dict
        state = official_state_dict(model)
    return {k: state[k] for k in keys}


def _rank(rank: int, world: int, port: int, root, out_dir) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        histories = train_both(root, out_dir)
        torch.save(histories, out_dir / f"history_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return ensure_dataset("synthetic_industrial", tmp_path_factory.mktemp("data"), seed=0)


def test_two_processes_write_the_single_process_checkpoints(root, tmp_path):
    single = train_both(root, tmp_path / "single")
    mp.spawn(_rank, args=(2, _free_port(), root, tmp_path / "ddp"), nprocs=2, join=True)
    for method, (name, key, _) in RUNS.items():
        one = torch.load(tmp_path / "single" / method / name, weights_only=True)[key]
        two = torch.load(tmp_path / "ddp" / method / name, weights_only=True)[key]
        assert one.keys() == two.keys()
        start = initial_state(method, one.keys())
        for k in one:
            if method == "anomalyclip":
                torch.testing.assert_close(two[k], one[k], **TOLERANCE, msg=f"{method} {k}")
            elif k not in ROUNDING_LEVEL_GRADIENT and not torch.equal(one[k], start[k]):
                update = (one[k] - start[k]).double()
                assert ((two[k] - start[k]).double() - update).norm() <= UPDATE_TOLERANCE * update.norm(), k
    for rank in (0, 1):  # every rank logs the loss of the global batch
        ddp = torch.load(tmp_path / "ddp" / f"history_rank{rank}.pt", weights_only=True)
        assert ddp["anomalyclip"]["total"] == pytest.approx(single["anomalyclip"]["total"], rel=1e-5)
        first, second = zip(ddp["inctrl"]["total"], single["inctrl"]["total"])
        assert first[0] == pytest.approx(first[1], rel=1e-5) and second[0] == pytest.approx(second[1], rel=1e-3)
    assert not (tmp_path / "ddp" / "anomalyclip" / "epoch_2.pth").exists()
