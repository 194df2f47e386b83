"""Train tiny nets with ``model.training.loop.fit`` and save the weights after every optimizer
step.

Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (each process saves
``rank<R>_<arch>.pt``) and called there in one process, to compare the two step by step.

    torchrun --nproc_per_node 2 tests/distributed_steps.py OUT_FOLDER
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.data.datasets import load_dataset  # noqa: E402
from model.nets.architectures import build_model  # noqa: E402
from model.runtime import distributed  # noqa: E402 -- after the path
from model.runtime.device import seed_everything  # noqa: E402
from model.training.loop import fit, prepare_model  # noqa: E402
from model.training.optim import make_optimizer  # noqa: E402
from model.training.recipes import recipe_for

BATCH = 64
# (arch, training images, epochs). 195 = 3 x 64 + 3: the last global batch is split 2 / 1,
# the others 32 / 32. With 1 image the second process's part of the only batch is empty.
RUNS = (("simple", 195, 2), ("vgg", 195, 2), ("simple", 1, 1))


def train_recording_steps(arch, images, epochs, path):
    """``epochs`` of ``arch`` on ``images`` shapes images (augmented), in float64; saves
    {"steps": (S, P) the flattened parameters after each step, "history": fit's metrics} to
    ``path``.

    float64 (the default dtype during the run: the net's weights, and the normalized images
    through the float64 mean and std) because in float32 a difference of 1e-8 in the weights,
    from adding two half-batch gradients instead of one, can move a ReLU or max-pool kink and
    change the next gradient by 3e-4: the runs would be equal only to a loose tolerance.
    """
    # The images are drawn before: shapes renders them in the default dtype.
    train_set = load_dataset("shapes", "train", first=images)
    test_set = load_dataset("shapes", "test").spread(100)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _train(arch, train_set, test_set, epochs, path)
    finally:
        torch.set_default_dtype(previous)


def _train(arch, train_set, test_set, epochs, path):
    seed_everything(0)
    recipe = recipe_for("shapes", arch)
    info = train_set.info
    model = build_model(arch, info.channels, len(info.classes), info.image_size,
                        recipe.vgg_plan)
    prepare_model(model, recipe, train_set, "cpu")
    optimizer = make_optimizer(model, recipe.lr, recipe.weight_decay, recipe)
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(
        torch.cat([parameter.detach().flatten() for parameter in model.parameters()])))
    history = list(fit(model, optimizer, train_set, test_set, first_epoch=1, epochs=epochs,
                       seed=0, batch_size=BATCH, peak_lr=recipe.lr, device="cpu",
                       augment=True, progress=False, recipe=recipe))
    torch.save({"steps": torch.stack(steps), "history": history}, path)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    with distributed.process_group(torch.device("cpu")) as processes:
        for arch, images, epochs in RUNS:
            train_recording_steps(arch, images, epochs,
                                  folder / f"rank{processes.rank}_{arch}_{images}.pt")
