"""Batched augmentation in torch (one affine grid_sample for the whole batch),
so the two training cores spend their time on the network, not on PIL.

Random parameters are always drawn on the CPU generator and then moved to the
images' device, so a run draws the same augmentations on a GPU as on the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(images: torch.Tensor, out_size: int, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Rotate (any angle), flip, scale and shift a float NHWC batch; returns NHWC out_size^2."""
    n = images.shape[0]
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    zoom = torch.empty(n).uniform_(*scale, generator=generator)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.12
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    ).to(images.device)
    nchw = images.permute(0, 3, 1, 2)
    grid = F.affine_grid(theta, [n, 3, out_size, out_size], align_corners=False)
    out = F.grid_sample(nchw, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.permute(0, 2, 3, 1)


def stain_jitter(images: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Brightness, contrast, saturation and per-channel gain: differences between stains and scanners."""
    n, device = images.shape[0], images.device
    x = images / 255.0
    gain = 1 + (torch.rand(n, 1, 1, 3, generator=generator).to(device) - 0.5) * 0.2 * strength
    bright = 1 + (torch.rand(n, 1, 1, 1, generator=generator).to(device) - 0.5) * 0.3 * strength
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator).to(device) - 0.5) * 0.4 * strength
    sat = 1 + (torch.rand(n, 1, 1, 1, generator=generator).to(device) - 0.5) * 0.6 * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    gray = x.mean(dim=3, keepdim=True)
    x = (x - gray) * sat + gray
    x = x * gain * bright
    return (x.clamp(0, 1) * 255.0)


def random_blur(images: torch.Tensor, generator: torch.Generator, p: float = 0.25, sigma_max: float = 1.5) -> torch.Tensor:
    """Gaussian blur on a random subset: out-of-focus fields."""
    n = images.shape[0]
    chosen = (torch.rand(n, generator=generator) < p).to(images.device)
    if not chosen.any():
        return images
    sigma = float(torch.empty(1).uniform_(0.5, sigma_max, generator=generator))
    radius = max(1, int(2 * sigma))
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(xs**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images.device, images.dtype)
    sel = images[chosen].permute(0, 3, 1, 2)
    c = sel.shape[1]
    sel = F.conv2d(F.pad(sel, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    sel = F.conv2d(F.pad(sel, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    out = images.clone()
    out[chosen] = sel.permute(0, 2, 3, 1)
    return out


def resize_nhwc(images: torch.Tensor, size: int) -> torch.Tensor:
    nchw = images.permute(0, 3, 1, 2).float()
    return F.interpolate(nchw, size=(size, size), mode="bilinear", align_corners=False, antialias=True).permute(0, 2, 3, 1)


def served_batches(crops: torch.Tensor, size: int, batch: int):
    """Crops as a served model receives them, a batch at a time: resized to its
    input and rounded back to uint8."""
    for i in range(0, len(crops), batch):
        yield resize_nhwc(crops[i : i + batch], size).round().to(torch.uint8)
