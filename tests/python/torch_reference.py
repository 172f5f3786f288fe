"""PyTorch reference for the Rust torch operators: Pillow decode (libjpeg-turbo, the same
pixels as the image source), then the same preprocessing ops in torch (antialiased bilinear
resize, centre crop, scale, mean / std), the same TorchScript file, batched.

argv[1]: JSON {model, height, width, resize, scale, mean, std, files, out, batch, threads,
eager (instead of model: a zoo Lite name, run as the eager `nn.Module` from its PyPI
wheel), prepack (call the file's `prepack(batch, height, width)` first, as dlp does on a
CPU), features_method (features from the file's `features` method, as dlp reads them),
output: "features" | "logits" | "image", index (the output's index in the module's tuple;
default 1 for features, 0 otherwise), channel_order ("RGB" default, or "BGR"),
image_output ({scale, mean, std}; default the input's), forward_only (time nothing but the
forward passes: the first batch is decoded and preprocessed once, before the clock, and run
as many times as the files make batches; the ceiling of any featurizer that runs this file
with these batches and threads)}. Writes float32 [len(files), D] to `out`, or for "image" the
uint8 images in Spark's layout (HWC, B G R), one after the other; prints timing JSON."""
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def load(path):
    im = Image.open(path)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).unsqueeze(0).float()


def resize(x, h, w):
    if x.shape[2] == h and x.shape[3] == w:
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def preprocess(x, a):
    if a.get("channel_order", "RGB") == "BGR":
        x = x[:, [2, 1, 0]]
    th, tw = a["height"], a["width"]
    if a["resize"] == "stretch":
        x = resize(x, th, tw)
    else:
        short = round(min(th, tw) / 0.875)
        h, w = x.shape[2], x.shape[3]
        rh, rw = (short, w * short // h) if h <= w else (h * short // w, short)
        x = resize(x, max(rh, th), max(rw, tw))
        rh, rw = x.shape[2], x.shape[3]
        top, left = (rh - th) // 2, (rw - tw) // 2
        x = x[:, :, top : top + th, left : left + tw]
    mean = torch.tensor(a["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(a["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return ((x * a["scale"] - mean) / std)[0]


def main():
    a = json.loads(sys.argv[1])
    torch.set_num_threads(a.get("threads", 1))
    if a.get("eager"):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models"))
        from export import LogitsAndFeatures, pretrained_lite

        model = LogitsAndFeatures(pretrained_lite(a["eager"])).eval()
    else:
        model = torch.jit.load(a["model"]).eval()
    if a.get("prepack"):
        model.prepack(a["batch"], a["height"], a["width"])
    output = a.get("output", "features")
    idx = a.get("index", 1 if output == "features" else 0)
    if a.get("features_method") and output == "features":
        model, idx = model.features, None
    outs = []
    files = a["files"]

    def prepare(names):
        batch = torch.stack([preprocess(load(f), a) for f in names])
        return batch.contiguous(memory_format=torch.channels_last) if a.get("channels_last") else batch

    def forward(batch):
        out = model(batch)
        outs.append(out[idx] if idx is not None and isinstance(out, tuple) else out)

    if a.get("forward_only"):
        with torch.inference_mode():
            first = prepare(files[: a["batch"]])
            start = time.perf_counter()
            for i in range(0, len(files), a["batch"]):
                forward(first[: len(files[i : i + a["batch"]])])
            seconds = time.perf_counter() - start
        print(json.dumps({"images": len(files), "seconds": seconds, "images_per_s": len(files) / seconds}))
        return
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(files), a["batch"]):
            forward(prepare(files[i : i + a["batch"]]))
    seconds = time.perf_counter() - start
    result = torch.cat(outs)
    if output == "image":
        result = to_pixels(result, a)
        result.numpy().tofile(a["out"])
        shape = list(result.shape[1:])
    else:
        feats = result.numpy().astype(np.float32)
        feats.tofile(a["out"])
        shape = [int(feats.shape[1])]
    print(json.dumps({"images": len(a["files"]), "seconds": seconds, "images_per_s": len(a["files"]) / seconds,
                      "dim": shape[0] if len(shape) == 1 else None, "shape": shape}))


def to_pixels(y, a):
    """[N, C, H, W] in the model's space -> uint8 [N, H, W, C] in Spark's B G R order."""
    o = a.get("image_output") or {"scale": a["scale"], "mean": a["mean"], "std": a["std"]}
    c = y.shape[1]
    mean = torch.tensor(o["mean"], dtype=torch.float64).view(1, c, 1, 1)
    std = torch.tensor(o["std"], dtype=torch.float64).view(1, c, 1, 1)
    px = ((y.double() * std + mean) / o["scale"]).round().clamp(0, 255).to(torch.uint8)
    if c == 3 and a.get("channel_order", "RGB") == "RGB":
        px = px[:, [2, 1, 0]]
    return px.permute(0, 2, 3, 1).contiguous()


if __name__ == "__main__":
    main()
