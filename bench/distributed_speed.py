"""One process against torchrun's N processes: training, the top-k scan and the evaluation.

    python bench/distributed_speed.py                    # 2 processes, every core shared out
    python bench/distributed_speed.py --processes 4      # on a machine with more cores

Runs each script twice, as users would: ``python script.py ...`` with every core, then
``torchrun --standalone --nproc_per_node N script.py ...`` with ``cores / N`` threads per
process. Prints a table: wall seconds of each command (start-up included), the speed-up, and
for training the images/s of the last epoch as the script reports it (the training loop
alone). On one machine the processes share its cores, so expect little: a process count
gains only where one process leaves cores idle (small batches, Python-bound work), and loses
to the copies of the model and data and to the gradient all-reduce. The gain of torchrun is
on several GPUs or machines (docs/torchrun.md).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(command, threads, folder):
    """Run ``command`` in the repository with ``threads`` threads per process; (seconds,
    stdout)."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, command))}\n{done.stderr[-2000:]}")
    (folder / "log.txt").open("a").write(f"$ {' '.join(map(str, command))}\n{done.stdout}\n")
    return seconds, done.stdout


def last_epoch_speed(printed):
    """The images/s of the last epoch line train_cnn.py printed."""
    return float(re.findall(r"(\d+) img/s", printed)[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=8000)
    parser.add_argument("--eval-images", type=int, default=512)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    threads = max(1, cores // args.processes)
    folder = Path(tempfile.mkdtemp(prefix="distributed_speed_"))
    python = [sys.executable]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(args.processes)]
    checkpoint = folder / "shapes_vgg.pt"
    jobs = {
        "train_cnn.py, shapes vgg, 2 epochs": (
            ["train_cnn.py", "--dataset", "shapes", "--epochs", "2", "--max-train-images",
             str(args.train_images), "--no-progress"], "{}.pt"),
        "max_activation_search.py, 20,000 train images, conv4": (
            ["max_activation_search.py", "--checkpoint", checkpoint, "--split", "train",
             "--layer", "conv4", "--channels", "0"], "{}"),
        f"evaluate_attributions.py, {args.eval_images} images, 4 methods": (
            ["evaluate_attributions.py", "--checkpoint", checkpoint, "--num-images",
             str(args.eval_images), "--batch-size", "64", "--methods", "occlusion",
             "gradcam", "saliency", "random", "--sanity-images", "4"], "{}"),
    }
    print(f"{cores} cores; one process with {cores} threads against {args.processes} "
          f"processes with {threads} each; logs in {folder}")
    print("preparing a checkpoint ...", flush=True)
    run(python + ["train_cnn.py", "--dataset", "shapes", "--epochs", "1", "--no-progress",
                  "--out", checkpoint], cores, folder)
    print(f"| command | 1 process (s) | {args.processes} processes (s) | speed-up | "
          "training img/s (1 / N) |")
    print("|---|---|---|---|---|")
    for name, (command, out) in jobs.items():
        one, printed_one = run(python + command + ["--out", folder / out.format("one")],
                               cores, folder)
        several, printed_several = run(torchrun + command + [
            "--out", folder / out.format("several")], threads, folder)
        speeds = (f"{last_epoch_speed(printed_one):.0f} / {last_epoch_speed(printed_several):.0f}"
                  if command[0] == "train_cnn.py" else "-")
        print(f"| {name} | {one:.1f} | {several:.1f} | {one / several:.2f}x | {speeds} |",
              flush=True)


if __name__ == "__main__":
    main()
