"""Where ``feature_maps.py``'s time goes, phase by phase, here and in another checkout.

    python bench/feature_maps_speed.py --arch mobilenet_v2 \\
        --weights ../shared/data/mobilenet_v2_imagenet.pth --dataset imagefolder \\
        --data-dir data/imagenette --index 1800                  # the report's section alone
    python bench/feature_maps_speed.py ... --before /tmp/old     # beside a checkout of before
    python bench/feature_maps_speed.py ... --sample-sizes 100 250 500 1000

Every flag that is not the bench's own goes to ``feature_maps.py``. Each run is a fresh
process that runs the script as ``python feature_maps.py`` would (imports included), with
the ``model/`` functions it calls timed: loading the net and image (``prepare_method``), the
image's forward pass (``layer_activations``), the pass over the test images of the dead-filter
statistics (``iterate_batches``, from its first batch to its last) and each PNG written
(``write_figure``, by file name); the time before each PNG since the step before it is that
figure's drawing. Wall and CPU seconds (the process's threads and its image-decoding
workers). The checkouts take turns, ``--repeats`` runs each, and the fastest whole run of
each is shown (``bench/timing.py``): on a CPU shared with other work the fastest run is the
least disturbed. Peak memory: the script's process, and the largest decoding worker.

``--sample-sizes``: instead, how the dead-filter statistic changes with the number of test
images: one pass over the whole split records on which images each channel fires
(``model.units.firing.fires``), and for each size the share of channels that never fire
(dead) and how far the channels' firing shares are from the whole split's, for the first N
images (what ``--num-images`` took before) and an even spread (``dataset.spread``, what it
takes now).
"""
import time

STARTED = time.perf_counter()  # a run's imports count from here, torch's included

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import runpy  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from timing import fastest  # noqa: E402

KINDS = {"filters_": "filters", "maps_": "maps", "dead_": "dead filters",
         "evolution_": "evolution"}  # the PNGs' names start with these


def cpu_seconds():
    """CPU seconds of this process (all its threads) and of its ended child processes (the
    image-decoding workers, which end with each pass over a folder)."""
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + workers.ru_utime + workers.ru_stime


class Timeline:
    """Wall and CPU seconds per phase, from the steps the probes see (see the module
    docstring): each probed call adds its own time to its phase and the time since the step
    before it to ``before`` (a figure's drawing, or the rest)."""

    def __init__(self):
        self.spent = {}
        self.last = (STARTED, 0.0)  # the end of the last step: (wall, CPU)
        self.depth = 0

    def add(self, phase, since, until):
        seconds = self.spent.setdefault(phase, [0.0, 0.0])
        seconds[0] += until[0] - since[0]
        seconds[1] += until[1] - since[1]

    def step(self, phase, before="the rest"):
        """A context manager timing one probed call (calls inside it count for it)."""
        timeline = self

        class Step:
            def __enter__(self):
                timeline.depth += 1
                self.start = (time.perf_counter(), cpu_seconds())
                if timeline.depth == 1:
                    timeline.add(before, timeline.last, self.start)

            def __exit__(self, *exc):
                timeline.depth -= 1
                if timeline.depth == 0:
                    timeline.last = (time.perf_counter(), cpu_seconds())
                    timeline.add(phase, self.start, timeline.last)

        return Step()


def probe_model_functions(timeline):
    """Replace the ``model/`` functions the script calls by timed ones, before the script
    imports them."""
    import model.cli.method_inputs as method_inputs
    import model.data.batches as batches
    import model.figures.plotting as plotting
    import model.nets.layers as layers

    load, forward, write = (method_inputs.prepare_method, layers.layer_activations,
                            plotting.write_figure)
    scan = batches.iterate_batches

    def prepare_method(*args, **kwargs):
        with timeline.step("load the net and the image", before="imports and start-up"):
            return load(*args, **kwargs)

    def layer_activations(*args, **kwargs):
        with timeline.step("the image's forward pass"):
            return forward(*args, **kwargs)

    def iterate_batches(*args, **kwargs):
        with timeline.step("dead filters: statistics (the test images' passes)"):
            yield from scan(*args, **kwargs)

    def write_figure(figure, path, *args, **kwargs):
        kind = next((kind for start, kind in KINDS.items() if Path(path).name.startswith(start)),
                    "other figures")
        with timeline.step(f"{kind}: PNGs written", before=f"{kind}: figures drawn"):
            return write(figure, path, *args, **kwargs)

    method_inputs.prepare_method, layers.layer_activations = prepare_method, layer_activations
    batches.iterate_batches, plotting.write_figure = iterate_batches, write_figure


def phases_of_one_run(checkout, argv):
    """In a fresh process: run ``checkout``'s feature_maps.py once with the probes in; print
    the wall and CPU seconds of each phase and the peak memory as JSON."""
    sys.path.insert(0, str(checkout))
    timeline = Timeline()
    probe_model_functions(timeline)
    sys.argv = [str(checkout / "feature_maps.py"), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")  # as python feature_maps.py does
        code = 0
    except SystemExit as end:
        code = end.code
    timeline.add("the rest", timeline.last, (time.perf_counter(), cpu_seconds()))
    spent = timeline.spent  # in the order the phases began
    spent["whole run"] = [sum(part[0] for part in spent.values()),
                          sum(part[1] for part in spent.values())]
    memory = {"process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "largest worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}
    print(json.dumps({"code": code, "seconds": spent, "peak_gib": memory}))


def run_checkout(checkout, argv):
    """One timed run of ``checkout``'s feature_maps.py in a fresh process: its JSON."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--in-process-of", str(checkout), "--",
                   *argv, "--out", out]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"{checkout}: feature_maps.py ended with code {result['code']}: "
                         f"{done.stderr.strip()}")
    return result


def print_phases(runs):
    """A markdown table: a row per phase, wall and CPU seconds of each checkout."""
    names = list(runs)
    phases = list(dict.fromkeys(phase for run in runs.values() for phase in run["seconds"]))
    phases.append(phases.pop(phases.index("the rest")))
    phases.append(phases.pop(phases.index("whole run")))
    print("| phase | " + " | ".join(f"{name}: wall s | {name}: CPU s" for name in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for phase in phases:
        cells = [runs[name]["seconds"].get(phase, [0.0, 0.0]) for name in names]
        print(f"| {phase} | " + " | ".join(f"{wall:.1f} | {cpu:.1f}" for wall, cpu in cells)
              + " |")
    for part in ("process", "largest worker"):
        print(f"| peak memory, {part} (GiB) | "
              + " | ".join(f"{runs[name]['peak_gib'][part]:.2f} | " for name in names) + " |")


@torch.no_grad()
def print_sample_sizes(argv, sizes):
    """The dead-filter statistic on the first N and on N spread-out test images, against the
    whole test split (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    from model.cli.arguments import ArgumentParser
    from model.cli.method_inputs import load_split, method_parser, prepare_method
    from model.data.batches import iterate_batches
    from model.nets.layers import conv_layer_names, layer_statistics
    from model.runtime.batching import images_per_batch
    from model.runtime.device import fast_layout, keep_freed_memory
    from model.units.firing import fires

    keep_freed_memory()
    parser = ArgumentParser(parents=[method_parser("feature_maps_speed")])
    parser.add_argument("--layers", nargs="+", default=None)
    args, _ = parser.parse_known_args(  # feature_maps.py's own flags (--show, ...) unused
        [*argv, "--out", tempfile.mkdtemp(prefix="feature_maps_speed_")])
    device, model, info, _ = prepare_method(args)
    layers = args.layers or conv_layer_names(model)
    dataset = load_split(info, "test", args)
    started = time.perf_counter()
    fired = {layer: [] for layer in layers}  # per layer: (N, K) bool, whether a channel fired
    batch = images_per_batch(args.batch_size, info.image_size, info.image_size)
    for inputs, _ in iterate_batches(dataset, batch, device):
        statistics = layer_statistics(model, fast_layout(inputs), layers, fires)
        for layer in layers:
            fired[layer].append(statistics[layer].cpu())
    seconds = time.perf_counter() - started
    fired = torch.cat([torch.cat(fired[layer]) for layer in layers], 1)  # (N, all channels)
    count = len(fired)
    print(f"{count} test images, {fired.shape[1]} channels of {len(layers)} layers, one pass: "
          f"{seconds:.1f} s")
    whole = fired.double().mean(0)
    print("| images | taken | dead channels (%) | firing shares' difference from all "
          "images', mean / largest (points) | channels dead here, alive over all images |")
    print("|---|---|---|---|---|")
    rows = [("all", torch.arange(count))]
    for size in sorted(s for s in sizes if s < count):
        rows += [("first", torch.arange(size)), ("spread", torch.arange(0, count, count // size))]
    for taken, index in rows:  # spread: every (count // size)-th image, as dataset.spread
        share = fired[index].double().mean(0)
        dead = share == 0
        difference = 100 * (share - whole).abs()
        print(f"| {len(index)} | {taken} | {100 * dead.double().mean():.2f} "
              f"| {difference.mean():.2f} / {difference.max():.1f} "
              f"| {int((dead & (whole > 0)).sum())} |")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--in-process-of"]:  # the child: argv = --in-process-of DIR -- flags
        return phases_of_one_run(Path(argv[1]), argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, default=None,
                        help="another checkout (the commit before) to time beside this one")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each checkout, taking turns; the fastest is shown "
                             "(default: 2)")
    parser.add_argument("--sample-sizes", type=int, nargs="+", default=None,
                        help="instead of timing: the dead-filter statistic on this many images "
                             "against the whole test split")
    args, flags = parser.parse_known_args(argv)
    if args.sample_sizes:
        return print_sample_sizes(flags, args.sample_sizes)
    checkouts = {"now": ROOT}
    if args.before is not None:
        checkouts = {"before": args.before.resolve(), **checkouts}
    results = {name: [] for name in checkouts}
    calls = {name: (lambda name=name, checkout=checkout: results[name].append(
        run_checkout(checkout, flags))) for name, checkout in checkouts.items()}
    fastest(args.repeats, torch.device("cpu"), calls)
    runs = {name: min(found, key=lambda run: run["seconds"]["whole run"][0])
            for name, found in results.items()}
    print(f"python feature_maps.py {' '.join(flags)}; the fastest of {args.repeats} runs each; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print_phases(runs)


if __name__ == "__main__":
    sys.exit(main())
