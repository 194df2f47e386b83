"""Timing shared by the benches: the fastest of repeated calls, taking turns."""
import time

import torch


def fastest(repeats, device, calls, warm_up=False):
    """{key: (seconds, result)} for each of ``calls`` ({key: function of no arguments}): the
    fastest of ``repeats`` runs, the device's queued work included. The calls take turns, so
    that a CPU shared with other work slows each alike; the fastest run is the least
    disturbed. With ``warm_up``, each is first called once untimed (the first call of a shape
    pays for kernel choice and memory)."""
    if warm_up:
        for function in calls.values():
            function()
    best = {key: (float("inf"), None) for key in calls}
    for _ in range(repeats):
        for key, function in calls.items():
            started = time.perf_counter()
            result = function()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started
            if seconds < best[key][0]:  # the fastest run's result with its time
                best[key] = (seconds, result)
    return best
