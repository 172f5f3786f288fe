"""PyTorch reference for the Rust torch operators: Pillow decode (libjpeg-turbo, the same
pixels as the image source), then the same preprocessing ops in torch (antialiased bilinear
resize, centre crop, scale, mean / std), the same TorchScript file, batched.

argv[1]: JSON {model, height, width, resize, scale, mean, std, files, out, batch, threads,
output: "features" | "logits"}. Writes float32 [len(files), D] to `out`; prints timing JSON."""
import json
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
    model = torch.jit.load(a["model"]).eval()
    idx = 1 if a.get("output", "features") == "features" else 0
    outs = []
    start = time.perf_counter()
    with torch.inference_mode():
        files = a["files"]
        for i in range(0, len(files), a["batch"]):
            batch = torch.stack([preprocess(load(f), a) for f in files[i : i + a["batch"]]])
            out = model(batch)
            outs.append(out[idx] if isinstance(out, tuple) else out)
    seconds = time.perf_counter() - start
    feats = torch.cat(outs).numpy().astype(np.float32)
    feats.tofile(a["out"])
    print(json.dumps({"images": len(a["files"]), "seconds": seconds, "images_per_s": len(a["files"]) / seconds,
                      "dim": int(feats.shape[1])}))


if __name__ == "__main__":
    main()
