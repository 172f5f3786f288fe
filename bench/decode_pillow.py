"""Pillow peer of `dlp-bench-decode`: same files (read into memory first), same thread count,
same modes. `decode`: full decode to RGB; `resize`: decode + bilinear resize to size x size;
`resize-draft`: the same with Pillow's JPEG draft mode (DCT scaling). Prints one JSON line."""
import argparse
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image


def files(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.join(d, n) for n in names if n.lower().endswith(".jpg")]
    return sorted(out)


def work(mode, size):
    def decode(blob):
        im = Image.open(io.BytesIO(blob))
        if mode == "resize-draft":
            im.draft("RGB", (size, size))
        im = im.convert("RGB")
        if mode.startswith("resize"):
            im = im.resize((size, size), Image.BILINEAR)
        return len(im.tobytes())

    return decode


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mode", default="decode")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--passes", type=int, default=2)
    a = p.parse_args()
    blobs = [open(f, "rb").read() for f in files(a.dir)]
    fn = work(a.mode, a.size)
    chunk = -(-len(blobs) // a.threads)
    parts = [blobs[i : i + chunk] for i in range(0, len(blobs), chunk)]
    seconds = 0.0
    with ThreadPoolExecutor(a.threads) as pool:
        for i in range(max(a.passes, 2)):
            t = time.perf_counter()
            out = sum(pool.map(lambda part: sum(map(fn, part)), parts))
            if i > 0:
                seconds += time.perf_counter() - t
    per_pass = seconds / (max(a.passes, 2) - 1)
    print(json.dumps({"impl": "pillow", "mode": a.mode, "threads": a.threads, "images": len(blobs),
                      "seconds": round(per_pass, 4), "images_per_s": round(len(blobs) / per_pass, 1),
                      "output_bytes": out}))


if __name__ == "__main__":
    main()
