"""Figure-6-style reconstruction grids (ViSaRL Fig. 6): an image, three random masks, each modality's reconstruction.

One row per image: the original modalities, then for each of ``num_masks`` masks, per modality, the masked input
(hidden patches greyed out) and the reconstruction (the visible patches as given, the prediction pasted into the
hidden ones). Saliency is drawn with a heat colour map, as the paper does "for the purposes of visualization".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from visarl.mae.loss import ReconstructionLoss
from visarl.mae.multimae import MultiMAE, denormalize_input
from visarl.mae.patches import patchify, unpatchify


def heat(x: Tensor) -> Tensor:
    """Single-channel ``[B, 1, H, W]`` in [0, 1] -> ``[B, 3, H, W]`` black-red-yellow-white ("hot") colours."""
    x = x.clamp(0, 1)
    return torch.cat([(3 * x).clamp(0, 1), (3 * x - 1).clamp(0, 1), (3 * x - 2).clamp(0, 1)], dim=1)


def to_rgb(x: Tensor) -> Tensor:
    """Any modality image ``[B, C, H, W]`` -> displayable ``[B, 3, H, W]`` in [0, 1]."""
    return x.clamp(0, 1) if x.shape[1] == 3 else heat(x[:, :1])


def make_grid(tiles: Sequence[Sequence[Tensor]], pad: int = 2, value: float = 1.0) -> Tensor:
    """Rows of equally sized ``[3, H, W]`` tiles -> one ``[3, H', W']`` image with ``pad`` pixels between tiles."""
    rows, cols = len(tiles), len(tiles[0])
    _, h, w = tiles[0][0].shape
    out = torch.full((3, rows * (h + pad) + pad, cols * (w + pad) + pad), value)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[:, y : y + h, x : x + w] = tile.detach().float().cpu()
    return out


def prediction_pixels(
    model: MultiMAE, loss_fn: ReconstructionLoss, name: str, pred: Tensor, inputs: Mapping[str, Tensor]
) -> Tensor:
    """Output ``name``'s predicted patches ``[B, N, P]`` as pixels of its modality ``[B, N, P]``.

    A decoder trained on per-patch normalised targets predicts standardised patches; MAE's visualisation maps them
    back with the true patch's mean and std (so such a panel shows structure, not absolute brightness). Predictions
    in the encoder's standardised rgb space are mapped back to [0, 1] pixels.
    """
    src = name.removesuffix("_norm")
    pred = pred.float()
    if loss_fn.is_normalized(name):
        target = patchify(loss_fn.model_space(src, inputs[src]), model.patch_size)
        mean = target.mean(-1, keepdim=True)
        std = (target.var(-1, keepdim=True, unbiased=True) + loss_fn.eps).sqrt()
        pred = pred * std + mean
    if loss_fn.input_norm == "none":
        return pred
    image = unpatchify(pred, model.patch_size, model.encoder.grid)
    return patchify(denormalize_input(src, image, loss_fn.input_norm), model.patch_size)


@torch.no_grad()
def reconstruction_grid(
    model: MultiMAE,
    loss_fn: ReconstructionLoss,
    inputs: Mapping[str, Tensor],
    num_masks: int = 3,
    num_visible: int | None = None,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    grey: float = 0.5,
) -> Tensor:
    """The grid ``[3, H', W']`` for ``inputs`` (float [0, 1] dicts of ``[B, C, H, W]``, one row per example).

    The decoder shown for rgb is ``rgb`` (raw pixels when the model also has ``rgb_norm``).
    """
    was_training = model.training
    model.eval()
    p = model.patch_size
    b = next(iter(inputs.values())).shape[0]
    columns: list[Tensor] = [to_rgb(inputs[m]) for m in model.modalities]  # each [B, 3, H, W]
    for _ in range(num_masks):
        masks = model.sample_masks(b, num_visible, alpha, generator, next(iter(inputs.values())).device)
        out = model(inputs, masks=masks)
        for m in model.modalities:
            hidden = masks[m][..., None]  # [B, N, 1]
            given = patchify(inputs[m].float(), p)
            shown = patchify(to_rgb(inputs[m].float()), p)  # grey patches after colouring, also for saliency
            masked = unpatchify(torch.where(hidden, torch.full_like(shown, grey), shown), p)
            pred = prediction_pixels(model, loss_fn, m, out.preds[m], inputs)
            pasted = unpatchify(torch.where(hidden, pred, given), p)
            columns += [masked, to_rgb(pasted)]
    model.train(was_training)
    return make_grid([[col[i] for col in columns] for i in range(b)])
