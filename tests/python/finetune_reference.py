"""PyTorch reference loop for fine-tuning (tests/tests/finetune.rs): the same trainable
TorchScript file, the same initial weights (the Rust fit's epoch-0 checkpoint, safetensors),
the same images in the same order (Pillow decode and the preprocessing of
torch_reference.py), frozen stages under no_grad, then torch.optim's SGD / Adam / AdamW on
the mean cross-entropy of each batch. No shuffling and no augmentation.

argv[1]: JSON {model, initial, files, labels, height, width, resize, scale, mean, std,
stages, first_trainable, batch, epochs, optimizer, lr, momentum, weight_decay,
label_smoothing, out, threads, cache_frozen (default true: the frozen stages run once, before
the timed loop; false: under no_grad in every step, as a plain training loop does)}. Writes
the trained parameters to `out` (safetensors, f32) and prints {"seconds", "images_per_s",
"loss", "peak_rss_mb"}."""
import json
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from torch_reference import load, preprocess


def read_safetensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, v in sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = v["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(v["shape"]).copy()
    return out


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    a = json.loads(sys.argv[1])
    torch.set_num_threads(a.get("threads", 2))
    m = torch.jit.load(a["model"]).eval()
    params = dict(m.named_parameters())
    init = read_safetensors(a["initial"])
    names = [n for n in init if not n.startswith(("first.", "second."))]
    with torch.no_grad():
        for n in names:
            params[n].data = torch.from_numpy(init[n]).clone()
    for n, p in params.items():
        p.requires_grad_(n in names)
    trained = [params[n] for n in names]
    kind = a["optimizer"]
    if kind == "sgd":
        opt = torch.optim.SGD(trained, lr=a["lr"], momentum=a["momentum"], weight_decay=a["weight_decay"])
    elif kind == "adam":
        opt = torch.optim.Adam(trained, lr=a["lr"], weight_decay=a["weight_decay"])
    else:
        opt = torch.optim.AdamW(trained, lr=a["lr"], weight_decay=a["weight_decay"])
    x = torch.stack([preprocess(load(f), a) for f in a["files"]])
    y = torch.tensor(a["labels"], dtype=torch.long)
    stages, first = a["stages"], a["first_trainable"]
    cache = a.get("cache_frozen", True)

    def run_frozen(h):
        with torch.no_grad():
            for s in stages[:first]:
                h = getattr(m, s)(h)
        return h

    frozen = torch.cat([run_frozen(x[i : i + 32]) for i in range(0, len(x), 32)]) if cache else x
    start = time.perf_counter()
    loss_sum, seen = 0.0, 0
    for _ in range(a["epochs"]):
        for i in range(0, len(y), a["batch"]):
            h = frozen[i : i + a["batch"]]
            if not cache:
                h = run_frozen(h)
            for s in stages[first:]:
                h = getattr(m, s)(h)
            loss = F.cross_entropy(h, y[i : i + a["batch"]], label_smoothing=a["label_smoothing"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(h)
            seen += len(h)
    seconds = time.perf_counter() - start
    write_safetensors(a["out"], {n: params[n].detach().numpy() for n in names})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "images_per_s": seen / seconds, "loss": loss_sum / seen, "peak_rss_mb": rss}))


if __name__ == "__main__":
    main()
