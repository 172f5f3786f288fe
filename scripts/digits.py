"""Writes scikit-learn's handwritten digits (UCI optdigits, shipped inside the
scikit-learn wheel: 1797 images of 8x8 pixels, 16 grey levels) as PNG files in one folder
per class, the layout `dlp fit` reads. Nothing is downloaded.

Usage: python scripts/digits.py OUT_DIR [--per-class N]
"""

import argparse
import pathlib

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=100)
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    digits = load_digits()
    written = {d: 0 for d in range(10)}
    for i, (img, target) in enumerate(zip(digits.images, digits.target)):
        if written[target] >= args.per_class:
            continue
        folder = out / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        # 0..16 ink to 8-bit grey, dark digits on white like a scan.
        pixels = (255 - np.round(img * 255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
        written[target] += 1
    print(f"wrote {sum(written.values())} digits to {out}")


if __name__ == "__main__":
    main()
