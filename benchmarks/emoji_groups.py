"""The emoji data set split by Unicode group into two image folders: one to choose levers on, one to
confirm them on, so that a recipe is not chosen on the images that judge it.

    python benchmarks/emoji_groups.py            # runs/emoji-groups/A (2,755) and runs/emoji-groups/B (900)

A: Smileys & Emotion, People & Body, Food & Drink, Activities, Symbols.
B: Animals & Nature, Travel & Places, Objects, Flags.
Each is a plain folder of 32x32 PNGs, trained and scored as `--data folder:runs/emoji-groups/A`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from ddpm.data.datasets import load_data

SPLITS = {"A": (0, 1, 3, 5, 7), "B": (2, 4, 6, 8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/emoji-groups")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    data = load_data("emoji", image_size=args.image_size)
    for split, groups in SPLITS.items():
        folder = Path(args.out) / split
        folder.mkdir(parents=True, exist_ok=True)
        chosen = [i for i, label in enumerate(data.labels.tolist()) if label in groups]
        for i in chosen:
            Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
        print(f"{folder}: {len(chosen)} emoji of groups {groups}")


if __name__ == "__main__":
    main()
