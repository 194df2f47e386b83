"""The dataset images that excite each unit of a layer most: a streaming top-k scan
(Zeiler & Fergus 2014, Fig. 2: the top 9 activations of a feature map, over the whole set).

One pass over a dataset, in batches and without gradients, keeps for every channel of the layer
the ``k`` images with the highest score, the channel's maximum over positions (or its mean), and
the position of that maximum (from the same reduction: no second pass). Each batch's top-k is
merged into the running top-k on tensors, so memory is channels x k whatever the number of
images. Ties are broken by the lower image index (a stable merge), exactly as a full sort
would. Under torchrun each process scans whole batches and the results are combined exactly.

- :func:`parse_channels`: ``["0-7", "12"]`` command-line tokens to checked channel indices.
- :class:`TopActivations`: the running (and final) top-k of every channel, merged batch by batch.
- :func:`layer_function`: inputs to a layer's activations as (N, K, h, w), classes included.
- :func:`search_top_activations`: one scan of a dataset into a :class:`TopActivations`.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

from model.data.batches import iterate_batches
from model.errors import UserError
from model.nets.layers import (
    as_feature_maps,
    clipped_activation,
    get_layer,
    layer_activations,
    layer_output,
)
from model.runtime import distributed
from model.runtime.batching import images_per_batch
from model.runtime.device import fast_layout


def parse_channels(tokens, count, flag="--channels"):
    """``["0-7", "12"]`` -> [0, ..., 7, 12], checked against ``count`` channels of ``flag``."""
    channels = []
    for token in tokens:
        try:
            low, _, high = token.partition("-")
            low, high = int(low), int(high or low)
        except ValueError:
            raise UserError(f"{flag} {token}: use indices and ranges like 0-7 12") from None
        if high < low:
            raise UserError(f"{flag} {token}: an empty range; write it low-high")
        channels.extend(range(low, high + 1))
    bad = [c for c in channels if not 0 <= c < count]
    if bad:
        raise UserError(f"{flag} {bad[0]} is out of range: the layer has {count} channels "
                        f"(0-{count - 1})")
    return channels


@dataclass
class TopActivations:
    """The running result of a scan, for K channels.

    Attributes:
        values: (K, k) scores, best first (-inf where fewer than k images were seen).
        indices: (K, k) dataset indices of those images (-1 where none).
        spots: (K, k) where each channel's maximum lies in those images, as a flat index
            into its (h, w) map (the first maximum, as ``torch.max`` picks it).
        width: w, the maps' width.
        channel_max: (K,) the highest activation of each channel over all images seen.
    """

    values: torch.Tensor
    indices: torch.Tensor
    spots: torch.Tensor
    width: int
    channel_max: torch.Tensor

    @classmethod
    def empty(cls, channels, k, width, device, dtype=torch.float32):
        return cls(torch.full((channels, k), -torch.inf, dtype=dtype, device=device),
                   torch.full((channels, k), -1, dtype=torch.int64, device=device),
                   torch.zeros(channels, k, dtype=torch.int64, device=device), width,
                   torch.full((channels,), -torch.inf, dtype=dtype, device=device))

    def merge(self, activations, first_index, score="max"):
        """Fold one batch of activations (B, K, h, w), dataset indices first_index.., in.

        Running entries come first in the concatenation and the sort is stable, so among
        equal scores the lower dataset index wins, as in a full stable sort. The position of
        each maximum comes from the same reduction as the maximum itself, so the scan needs no
        second pass over the kept images.
        """
        flat = activations.flatten(2)  # (B, K, hw)
        peak, spot = flat.max(2)  # (B, K) each
        scores = (peak if score == "max" else flat.mean(2)).T  # (K, B)
        self.channel_max = torch.maximum(self.channel_max, peak.amax(0))
        # A batch image can enter a channel's top k only by beating its current k-th score:
        # on a tie the running entry, with the lower dataset index, stays ahead. After the
        # first batches few images qualify, so the sorts below run on those alone.
        candidates = (scores > self.values[:, -1:]).any(0).nonzero()[:, 0]  # ascending
        if len(candidates) == 0:
            return
        keep = min(self.k, len(candidates))
        ranked = torch.sort(scores[:, candidates], dim=1, descending=True, stable=True)
        best = candidates[ranked.indices[:, :keep]]  # (K, keep) batch positions
        values = torch.cat([self.values, scores.gather(1, best)], dim=1)  # (K, k + keep)
        indices = torch.cat([self.indices, best + first_index], dim=1)
        spots = torch.cat([self.spots, spot.T.gather(1, best)], dim=1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :self.k]
        self.values = values.gather(1, order)
        self.indices = indices.gather(1, order)
        self.spots = spots.gather(1, order)

    @classmethod
    def combine(cls, parts, device):
        """The top-k of several scans of disjoint images (the processes' ``TopActivations``;
        None for a process that had no images), on ``device``: exactly the one scan of them
        all, ties again broken by the lower dataset index."""
        parts = [part for part in parts if part is not None]
        values = torch.cat([part.values for part in parts], dim=1).to(device)  # (K, P * k)
        indices = torch.cat([part.indices for part in parts], dim=1).to(device)
        spots = torch.cat([part.spots for part in parts], dim=1).to(device)
        # Sort by index, then stably by score: equal scores stay in index order.
        order = torch.sort(indices, dim=1, stable=True).indices
        by_score = torch.sort(values.gather(1, order), dim=1, descending=True, stable=True)
        order = order.gather(1, by_score.indices[:, :parts[0].k])
        channel_max = torch.stack([part.channel_max.to(device) for part in parts]).amax(0)
        return cls(values.gather(1, order), indices.gather(1, order), spots.gather(1, order),
                   parts[0].width, channel_max)

    @property
    def positions(self):
        """(K, k, 2): (row, col) of each channel's maximum in its kept images."""
        return torch.stack([self.spots // self.width, self.spots % self.width], dim=2)

    @property
    def k(self):
        return self.values.shape[1]

    def dead_channels(self):
        """Channels that were never positive on the scan."""
        return (self.channel_max <= 0).nonzero()[:, 0].tolist()


def layer_function(model, layer, before=None):
    """The function from inputs to the layer's activations as (N, K, h, w).

    The last Linear layer (``fc``, AlexNet's ``classifier.6``) gives the class scores as
    (N, classes, 1, 1). The inputs are cast to the model's dtype (normalized images are
    float32; a test net may be float64). With ``before``, the name of the clip that ends the
    layer (:func:`ranking_clip`), the function gives that clip's input instead, the layer's
    pre-activation.
    """
    dtype = next(model.parameters()).dtype
    if isinstance(get_layer(model, layer), nn.Linear):
        if layer != [name for name, module in model.named_modules()
                     if isinstance(module, nn.Linear)][-1]:
            raise UserError(f"--layer {layer}: only the final Linear layer (the classes) or a "
                            "layer of the convolutional part can be searched")
        return lambda inputs: model(inputs.to(dtype))[:, :, None, None]
    if before is not None:
        return lambda inputs: as_feature_maps(
            layer_output(model, before, inputs.to(dtype), before=True), model, layer)
    return lambda inputs: layer_activations(model, inputs.to(dtype), [layer])[layer]


def ranking_clip(model, layer, score):
    """The clip (``nn.ReLU6``, ``nn.Hardtanh``) whose input the scan ranks ``layer``'s images
    by, or None: for ``score`` max on a layer clipped from above
    (:func:`~model.nets.layers.clipped_activation`). ReLU6 caps a unit at 6, and a trained
    MobileNetV2 drives its strongest units there on many images (all 1,280 channels of
    ``features.18``: the top 9 all at 6.00, in an arbitrary order). min(max(z, 0), 6) never
    reverses the order of two values z, so ranking by z keeps every order the clipped maximum
    gives where it is not tied and breaks the ties at the cap by how far past it the image
    drives the unit. The mean over positions is left on the clipped maps: it averages 49 or
    more of them and is rarely tied."""
    if score != "max" or isinstance(get_layer(model, layer), nn.Linear):
        return None
    return clipped_activation(model, layer)


@torch.no_grad()
def search_top_activations(model, dataset, layer, k=9, score="max", batch_size=256,
                           device="cpu", progress=False):
    """Scan ``dataset`` once and keep every channel's top-k images (see :class:`TopActivations`).

    Args:
        model: a net of the ``model`` package in eval mode.
        dataset: an :class:`~model.datasets.ImageDataset`.
        layer: a conv-part layer name, or the final Linear layer's name for classes.
        k: images kept per channel; score: ``max`` or ``mean`` over positions. ``max`` of a
            layer clipped from above (ReLU6) is the maximum of its pre-activation
            (:func:`ranking_clip`).

    Under torchrun each process scans whole batches (``Processes.my_batches``) and every
    process gets the processes' results combined (:meth:`TopActivations.combine`): the same
    as one process's scan.

    Returns:
        :class:`TopActivations`; memory stays O(channels x k) whatever ``len(dataset)``.
    """
    function = layer_function(model, layer, before=ranking_clip(model, layer, score))
    processes = distributed.current()
    # Channels-last batches of at most images_per_batch images: 512 photos through the trained
    # MobileNetV2 to features.18 in 4.3 s, against 6.8 s in batches of 256 and 6.5 s in
    # contiguous ones of 64 (2-core "AMD EPYC" Zen 5).
    batch_size = images_per_batch(batch_size, dataset.info.image_size, dataset.info.image_size)
    mine = processes.my_batches(len(dataset), batch_size)
    result = None
    batches = iterate_batches(dataset, batch_size, device,
                              indices=processes.my_indices(len(dataset), batch_size))
    for (first_index, _), (inputs, _) in tqdm(
            zip(mine, batches), total=len(mine), disable=not (progress and processes.main),
            desc=f"scanning {layer}", unit="batch"):
        activations = function(fast_layout(inputs))
        if result is None:
            result = TopActivations.empty(activations.shape[1], k, activations.shape[-1],
                                          activations.device, activations.dtype)
        result.merge(activations, first_index, score)
    if processes.several:
        result = TopActivations.combine(distributed.gather(result), device)
    return result
