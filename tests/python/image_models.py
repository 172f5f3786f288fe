"""Writes two small user TorchScript models with image outputs, and their manifests, into a
model directory (argv[1]), for the tests of TorchImageTransformer:

- `half_smooth`: RGB, 96x128 stretch, ImageNet mean/std; returns (2x2 average-pooled image
  [N, 3, 48, 64] in the input's normalized space, per-channel mean [N, 3]). Its image output
  is denormalized by the inverse of the input normalization (no `image_output`).
- `gray_lines`: BGR, 64x64 shorter side + centre crop, scale 1/255, mean 0, std 1; returns
  one tensor: the luma of a vertical-edge-enhanced image [N, 1, 64, 64] in [0, 1], with
  `image_output` {scale 1/255, mean [0], std [1]}.

- `flat_means`: the per-channel means through `view`s (needs NCHW memory).
- `scaled_means`: scripted, with the manifest's `methods`: `prepack(batch, height, width)`
  sets a scale to batch * 1000 + height, and `features` returns the per-channel means times
  that scale (`forward` returns them unscaled), so a test reads both calls off the output.
  `broken_methods` is the same file with a manifest naming a method it does not have.

They are built from plain torch ops; nothing is downloaded."""
import hashlib
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class HalfSmooth(nn.Module):
    def forward(self, x):
        return F.avg_pool2d(x, 2), x.mean(dim=(2, 3))


class GrayLines(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", torch.tensor([[[[-0.5, 1.0, 0.5]]]]))

    def forward(self, x):
        luma = 0.114 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.299 * x[:, 2:3]
        lines = F.conv2d(F.pad(luma, (1, 1, 0, 0), mode="replicate"), self.kernel)
        return lines.clamp(0.0, 1.0)


class FlatMeans(nn.Module):
    def forward(self, x):
        n = x.size(0)
        return x.view(n, -1).view(n, 3, -1).mean(-1)


class ScaledMeans(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = 0.0

    def forward(self, x):
        return x.mean(dim=(2, 3))

    @torch.jit.export
    def features(self, x):
        return x.mean(dim=(2, 3)) * self.scale

    @torch.jit.export
    def prepack(self, batch: int, height: int, width: int):
        self.scale = float(batch * 1000 + height)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write(out, name, module, h, w, manifest, file=None):
    pt = os.path.join(out, f"{file or name}.pt")
    if file is None:
        traced = torch.jit.script(module.eval()) if isinstance(module, ScaledMeans) else \
            torch.jit.trace(module.eval(), torch.zeros(2, 3, h, w))
        traced.save(pt)
    manifest = {"name": name, "description": f"test model {name} (tests/python/image_models.py)",
                "file": os.path.basename(pt), "sha256": sha256(pt), "input": {"height": h, "width": w},
                **manifest}
    with open(os.path.join(out, f"{name}.yaml"), "w") as f:
        yaml.safe_dump(manifest, f, sort_keys=False)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.set_grad_enabled(False)
    write(out, "half_smooth", HalfSmooth(), 96, 128, {
        "resize": "stretch", "channel_order": "RGB", "scale": 1.0 / 255.0,
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        "outputs": {"image": 0, "features": 1}, "feature_dim": 3})
    write(out, "gray_lines", GrayLines(), 64, 64, {
        "resize": "shorter_side_center_crop", "channel_order": "BGR", "scale": 1.0 / 255.0,
        "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "outputs": {"image": 0},
        "image_output": {"scale": 1.0 / 255.0, "mean": [0.0], "std": [1.0]}})
    write(out, "flat_means", FlatMeans(), 96, 128, {
        "resize": "stretch", "channel_order": "RGB", "scale": 1.0 / 255.0,
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "outputs": {"features": 0}, "feature_dim": 3})
    means = {"resize": "stretch", "channel_order": "RGB", "scale": 1.0 / 255.0,
             "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "outputs": {"features": 0}, "feature_dim": 3}
    write(out, "scaled_means", ScaledMeans(), 96, 128,
          {**means, "methods": {"features": "features", "prepack": "prepack"}})
    write(out, "broken_methods", None, 96, 128, {**means, "methods": {"features": "nope"}},
          file="scaled_means")
    print(f"wrote half_smooth, gray_lines, flat_means, scaled_means, broken_methods -> {out}")


if __name__ == "__main__":
    main()
