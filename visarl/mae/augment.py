"""Training augmentation applied identically to every modality, batched on the device: a left-right flip and,
optionally, a random resized crop.

Table II lists "RandomResizedCrop", but the authors' fork does not crop: its ``dataset.py`` (``RealWorldData``,
the class ``run_pretraining_multimae.py`` trains on) flips rgb and saliency together with probability 0.5 and the
crop is commented out. :class:`PairedAugment` defaults to that flip alone; ``stage: pretrain`` turns the crop on
(``augment.crop``, default true, since the paper is explicit). With ``crop=True`` it draws one crop box
per example as MultiMAE's ``DataAugmentationForMultiMAE`` does (torchvision's ``get_params`` at
``scale=(0.2, 1.0)``, ``ratio=(0.75, 1.3333)``) and applies that box to every modality, so rgb and saliency stay
pixel-aligned.

Instead of PIL crops per image in the DataLoader, a whole batch is cropped at once on the device by
bilinear resampling (``grid_sample`` with one affine map per example): the frames travel as uint8 and the
augmentation costs one kernel, on the GPU as on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (0.75, 4.0 / 3.0),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> Tensor:
    """Crop boxes ``[B, 4]`` as integer-valued ``(top, left, h, w)``, drawn as torchvision's ``get_params`` does.

    Per example: area fraction ~ U(scale), log aspect ratio ~ U(log ratio), ``w = round(sqrt(area * r))``,
    ``h = round(sqrt(area / r))``; the first of ``attempts`` draws that fits the image is kept, its corner
    uniform over the valid positions. Examples with no fitting draw fall back to the largest centred box
    whose aspect ratio is inside ``ratio`` (the whole image when it is square).
    """
    dev = generator.device if generator is not None else torch.device(device)
    area = height * width
    u = torch.rand(batch, attempts, generator=generator, device=dev)
    target = area * (scale[0] + (scale[1] - scale[0]) * u)  # [B, A]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
        batch, attempts, generator=generator, device=dev
    )
    r = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * r))
    h = torch.round(torch.sqrt(target / r))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # [B, A]
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros(batch, dtype=torch.long, device=dev))
    rows = torch.arange(batch, device=dev)
    h, w, found = h[rows, first], w[rows, first], ok.any(1)
    # fallback: centre crop with the aspect ratio clamped into range (torchvision's rule)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    h = torch.where(found, h, torch.full_like(h, fh))
    w = torch.where(found, w, torch.full_like(w, fw))
    # corner uniform over the valid positions: floor(U * (n + 1)) is uniform on {0, ..., n}
    top = torch.floor(torch.rand(batch, generator=generator, device=dev) * (height - h + 1)).clamp_max(height - h)
    left = torch.floor(torch.rand(batch, generator=generator, device=dev) * (width - w + 1)).clamp_max(width - w)
    top = torch.where(found, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(found, left, torch.full_like(left, (width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1)


def crop_resize(images: Tensor, boxes: Tensor, size: tuple[int, int], flip: Tensor | None = None) -> Tensor:
    """Resample ``images [B, C, H, W]`` (float) inside ``boxes [B, 4]`` (top, left, h, w) to ``size``, bilinear.

    Same result as cropping the box and ``F.interpolate(..., mode="bilinear", align_corners=False)``; ``flip``
    ``[B]`` bool mirrors those examples left-right.
    """
    b, _, height, width = images.shape
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    top, left, h, w = boxes.unbind(1)
    # output pixel centres span [-1, 1] (align_corners=False); the box spans [left, left + w] input pixels,
    # i.e. normalised input x = u * w / W + (2 * left + w) / W - 1
    sx, sy = w / width, h / height
    tx, ty = (2 * left + w) / width - 1, (2 * top + h) / height - 1
    if flip is not None:
        sx = torch.where(flip.to(images.device), -sx, sx)
    theta = torch.zeros(b, 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, [b, 1, *size], align_corners=False)  # [B, h', w', 2] as (x, y)
    # keep samples between the box's first and last pixel centres: near its edges a crop-then-resize repeats the
    # edge pixel instead of blending in pixels from outside the box
    lo = torch.stack([(2 * left + 1) / width - 1, (2 * top + 1) / height - 1], dim=1)[:, None, None]  # [B, 1, 1, 2]
    hi = torch.stack([(2 * (left + w) - 1) / width - 1, (2 * (top + h) - 1) / height - 1], dim=1)[:, None, None]
    grid = torch.maximum(torch.minimum(grid, hi), lo)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def paired_hflip(inputs: Mapping[str, Tensor], flip: Tensor) -> dict[str, Tensor]:
    """Mirror left-right the examples where ``flip [B]`` is True, in every modality (exact: no resampling)."""
    out = {}
    for name, x in inputs.items():
        where = flip.to(x.device).view(-1, *([1] * (x.dim() - 1)))
        out[name] = torch.where(where, x.flip(-1), x)
    return out


class PairedAugment:
    """One random flip (and, with ``crop``, one random box) per example, applied to every modality of a dict
    ``{name: [B, C, H, W]}``. ``hflip`` is the flip probability (the authors' fork: 0.5)."""

    def __init__(
        self,
        crop: bool = False,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (0.75, 4.0 / 3.0),
        hflip: float = 0.5,
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < lo <= hi, got {ratio}")
        if not 0 <= hflip <= 1:
            raise ValueError(f"hflip must be a probability, got {hflip}")
        self.crop, self.scale, self.ratio, self.hflip = crop, tuple(scale), tuple(ratio), hflip

    def __call__(self, inputs: Mapping[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        ref = next(iter(inputs.values()))
        b, _, height, width = ref.shape
        for name, x in inputs.items():
            if tuple(x.shape[-2:]) != (height, width):
                raise ValueError(f"modality {name!r} is {tuple(x.shape[-2:])}, not {(height, width)} like the others")
        flip = None
        if self.hflip > 0:
            dev = generator.device if generator is not None else ref.device
            flip = torch.rand(b, generator=generator, device=dev) < self.hflip
        if not self.crop:
            return paired_hflip(inputs, flip) if flip is not None else dict(inputs)
        boxes = sample_crop_boxes(b, height, width, self.scale, self.ratio, generator, ref.device)
        # every modality in one resampling pass: same boxes by construction
        names = list(inputs)
        out = crop_resize(torch.cat([inputs[n] for n in names], dim=1), boxes, (height, width), flip)
        return dict(zip(names, out.split([inputs[n].shape[1] for n in names], dim=1), strict=True))


def PairedRandomResizedCrop(  # noqa: N802 (the old class name, kept as a constructor)
    scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (0.75, 4.0 / 3.0), hflip: float = 0.0
) -> PairedAugment:
    """A :class:`PairedAugment` that crops (Table II's RandomResizedCrop), flipping with probability ``hflip``."""
    return PairedAugment(True, scale, ratio, hflip)
