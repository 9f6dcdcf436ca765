"""The two networks. Both take uint8 NHWC pixels so the exported graph owns
its normalisation and the serving side never has to know the training stats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Per-channel RGB mean/std of the training crops (rounded); baked into the graph.
PIXEL_MEAN = (0.72, 0.63, 0.70)
PIXEL_STD = (0.17, 0.21, 0.13)


def conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.skip(x))


class PixelNorm(nn.Module):
    """uint8 NHWC -> normalised float NCHW."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float()
        return (x - self.mean) / self.std


class ResidualHead(nn.Module):
    """A linear head plus a small MLP that adds to the logits of some classes only.

    The linear part keeps the classes an earlier head learnt (their rows can stay exactly
    as they were); the MLP lets the new classes draw boundaries a linear head cannot, such
    as a lymphoblast against a hematogone in the same laboratory's fields.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.base = nn.Linear(in_features, num_classes)
        self.extra = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
        self.register_buffer("extra_mask", torch.zeros(num_classes))
        self.in_features, self.out_features = in_features, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.extra(x) * self.extra_mask


class CellClassifier(nn.Module):
    """Small ResNet for S x S cell crops; returns calibrated probabilities.

    ``temperature`` is fitted after training on the val split (temperature
    scaling, Guo et al. 2017) and stored as a buffer so export carries it.
    ``class_bias`` is a per-class log-probability offset for the 8-view average
    (DihedralAverage applies it), fitted on cross-fitted held-out crops; zero
    unless training.crossfit --class-bias set it.
    """

    def __init__(self, num_classes: int, width: int = 32, head_hidden: int = 0) -> None:
        super().__init__()
        w = self.width = width
        self.norm = PixelNorm()
        self.features = nn.Sequential(
            conv_bn(3, w, 2),
            BasicBlock(w, w),
            BasicBlock(w, 2 * w, 2),
            BasicBlock(2 * w, 2 * w),
            BasicBlock(2 * w, 4 * w, 2),
            BasicBlock(4 * w, 4 * w),
            BasicBlock(4 * w, 8 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(0.2)
        self.head: nn.Module = ResidualHead(8 * w, num_classes, head_hidden) if head_hidden else nn.Linear(8 * w, num_classes)
        self.register_buffer("temperature", torch.ones(1))
        self.register_buffer("class_bias", torch.zeros(num_classes))

    def logits(self, crops_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(self.norm(crops_uint8_nhwc))))

    def forward(self, crops_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(crops_uint8_nhwc) / self.temperature, dim=1)


def load_classifier(state_dict: dict[str, torch.Tensor], num_classes: int) -> CellClassifier:
    """A CellClassifier of the width the weights were trained at (the stem's output channels)."""
    hidden = state_dict["head.extra.0.weight"].shape[0] if "head.extra.0.weight" in state_dict else 0
    model = CellClassifier(num_classes, width=state_dict["features.0.0.weight"].shape[0], head_hidden=hidden)
    # Runs from before class_bias existed carry none: theirs is zero.
    model.load_state_dict({"class_bias": model.class_bias, **state_dict})
    return model


class CellDetector(nn.Module):
    """CenterNet-style detector (Zhou et al. 2019, "Objects as Points").

    A small ResNet backbone with a two-step top-down merge to stride 4; heads
    for a per-category centre heatmap, box size and sub-pixel offset. The
    decode (3x3 max-pool peak picking, top-K) is part of the graph, so every
    runtime returns the same fixed-size padded outputs.
    """

    STRIDE = 4

    def __init__(self, num_categories: int, top_k: int = 128, width: int = 24) -> None:
        super().__init__()
        w = width
        self.top_k = top_k
        self.norm = PixelNorm()
        self.stem = nn.Sequential(conv_bn(3, w, 2), conv_bn(w, 2 * w, 2))  # /4
        self.stage8 = nn.Sequential(BasicBlock(2 * w, 3 * w, 2), BasicBlock(3 * w, 3 * w))  # /8
        self.stage16 = nn.Sequential(BasicBlock(3 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w))  # /16
        self.stage32 = nn.Sequential(BasicBlock(4 * w, 6 * w, 2), BasicBlock(6 * w, 6 * w))  # /32
        self.lat16 = nn.Conv2d(4 * w, 2 * w, 1)
        self.lat8 = nn.Conv2d(3 * w, 2 * w, 1)
        self.lat4 = nn.Conv2d(2 * w, 2 * w, 1)
        self.top = nn.Conv2d(6 * w, 2 * w, 1)
        self.smooth = conv_bn(2 * w, 2 * w)
        self.heatmap = nn.Sequential(conv_bn(2 * w, 2 * w), nn.Conv2d(2 * w, num_categories, 1))
        self.size = nn.Sequential(conv_bn(2 * w, 2 * w), nn.Conv2d(2 * w, 2, 1))
        self.offset = nn.Sequential(conv_bn(2 * w, 2 * w), nn.Conv2d(2 * w, 2, 1))
        # Focal-loss prior so the heatmap starts near "background" (CenterNet's -2.19).
        nn.init.constant_(self.heatmap[-1].bias, -2.19)

    def raw(self, image_uint8_nhwc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.norm(image_uint8_nhwc)
        c4 = self.stem(x)
        c8 = self.stage8(c4)
        c16 = self.stage16(c8)
        c32 = self.stage32(c16)
        p = self.top(c32)
        p = F.interpolate(p, size=c16.shape[-2:], mode="nearest") + self.lat16(c16)
        p = F.interpolate(p, size=c8.shape[-2:], mode="nearest") + self.lat8(c8)
        p = F.interpolate(p, size=c4.shape[-2:], mode="nearest") + self.lat4(c4)
        p = self.smooth(p)
        return self.heatmap(p), self.size(p), self.offset(p)

    def forward(self, image_uint8_nhwc: torch.Tensor):
        heat_logits, size, offset = self.raw(image_uint8_nhwc)
        return decode(heat_logits, size, offset, self.top_k, self.STRIDE)


def decode(heat_logits: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, top_k: int, stride: int):
    """Peaks of the heatmap -> (boxes BxKx4 in input pixels, scores BxK, categories BxK, count Bx1)."""
    heat = torch.sigmoid(heat_logits)
    peaks = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * (peaks == heat).float()
    b, c, h, w = heat.shape
    scores, index = torch.topk(heat.reshape(b, c * h * w), top_k, dim=1)
    categories = torch.div(index, h * w, rounding_mode="floor")
    pixel = index - categories * (h * w)
    ys = torch.div(pixel, w, rounding_mode="floor")
    xs = pixel - ys * w
    size = size.reshape(b, 2, h * w)
    offset = offset.reshape(b, 2, h * w)
    gather = pixel.unsqueeze(1).expand(b, 2, top_k)
    bw_bh = torch.gather(size, 2, gather).clamp(min=0) * stride
    off = torch.gather(offset, 2, gather)
    cx = (xs.float() + off[:, 0]) * stride
    cy = (ys.float() + off[:, 1]) * stride
    boxes = torch.stack([cx - bw_bh[:, 0] / 2, cy - bw_bh[:, 1] / 2, cx + bw_bh[:, 0] / 2, cy + bw_bh[:, 1] / 2], dim=2)
    count = (scores >= 0.05).sum(dim=1, keepdim=True).int()
    return boxes, scores, categories.int(), count


def dihedral_views(crops_uint8_nhwc: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations and flips of each crop, as flips and a transpose (rot90 does not export to ONNX)."""
    x = crops_uint8_nhwc
    flips = [x, torch.flip(x, dims=(2,)), torch.flip(x, dims=(1,)), torch.flip(x, dims=(1, 2))]
    return flips + [v.transpose(1, 2) for v in flips]


class DihedralAverage(nn.Module):
    """Test-time augmentation in the graph: mean probability over the 8 rotations and
    flips of each crop (cells have no orientation). Measured on the val split: +2.6
    points accuracy on matek_bm and +1.8 on pbc at a mid-training checkpoint."""

    def __init__(self, classifier: CellClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    @property
    def temperature(self) -> torch.Tensor:
        return self.classifier.temperature

    def forward(self, crops_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        n = crops_uint8_nhwc.shape[0]
        probs = self.classifier(torch.cat(dihedral_views(crops_uint8_nhwc), dim=0))
        mean = probs.reshape(8, n, -1).mean(dim=0)
        # The class bias shifts the averaged log-probabilities; with a zero bias this
        # returns the mean itself (it already sums to one).
        return torch.softmax(torch.log(mean.clamp_min(1e-12)) + self.classifier.class_bias, dim=1)

    def view_logits(self, crops: torch.Tensor) -> torch.Tensor:
        """8 x N x C logits of the views whose probabilities forward averages (temperature fitting)."""
        return torch.stack([self.classifier.logits(v) for v in dihedral_views(crops)])

    def set_temperature(self, value: float) -> None:
        self.classifier.temperature.fill_(value)

    @property
    def class_bias(self) -> torch.Tensor:
        return self.classifier.class_bias


class ClassifierEnsemble(nn.Module):
    """Several classifiers, each averaged over its 8 views, their probabilities averaged.

    Crops arrive at the largest member's input size; a member trained on smaller
    crops gets them resized inside the graph, so the serving contract stays one
    crop size. Members share one temperature, fitted on the averaged output.
    """

    def __init__(self, members: list[CellClassifier], sizes: list[int]) -> None:
        super().__init__()
        self.members = nn.ModuleList(DihedralAverage(m) for m in members)
        self.sizes = list(sizes)
        self.input_size = max(sizes)

    @property
    def temperature(self) -> torch.Tensor:
        return self.members[0].temperature

    def _sized(self, crops: torch.Tensor, size: int) -> torch.Tensor:
        if size == self.input_size:
            return crops
        nchw = F.interpolate(crops.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear", align_corners=False)
        return nchw.permute(0, 2, 3, 1)  # stays float: PixelNorm takes either

    def forward(self, crops_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        probs = [member(self._sized(crops_uint8_nhwc, size)) for member, size in zip(self.members, self.sizes, strict=True)]
        return torch.stack(probs).mean(dim=0)

    def view_logits(self, crops: torch.Tensor) -> torch.Tensor:
        """(8 x members) x N x C: the mean of all their probabilities is what forward returns."""
        return torch.cat([m.view_logits(self._sized(crops, s)) for m, s in zip(self.members, self.sizes, strict=True)])

    def set_temperature(self, value: float) -> None:
        for member in self.members:
            member.set_temperature(value)
