"""Synthetic Omniglot archives in the official layout, for tests without the real data.

``write_archive`` writes ``<name>.zip`` holding ``<name>/<Alphabet>/characterNN/<id>_<drawer>.png``:
105x105 1-bit PNGs, black strokes on white like the real drawings. Every character is a few
random polylines; each drawing jitters them, so drawings differ but look alike. The content
depends only on the alphabet name and character number, so an alphabet written into two
archives is identical in both (as Greek and Latin are in the two small background sets).
"""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 105


def _stable_hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def drawing(alphabet: str, character: int, drawer: int) -> Image.Image:
    """One synthetic 1-bit drawing of ``alphabet``'s ``character`` by ``drawer``."""
    seed = _stable_hash(f"{alphabet}/{character}")
    shape = random.Random(seed)
    jitter = random.Random(seed * 100 + drawer)
    image = Image.new("1", (SIZE, SIZE), 1)
    pen = ImageDraw.Draw(image)
    for _ in range(shape.randint(2, 4)):
        points = [(shape.randint(15, 90), shape.randint(15, 90)) for _ in range(3)]
        moved = [(x + jitter.randint(-5, 5), y + jitter.randint(-5, 5)) for x, y in points]
        pen.line(moved, fill=0, width=3)
    return image


def write_archive(
    directory: Path,
    name: str,
    alphabets: Sequence[str],
    characters: int = 8,
    drawers: int = 20,
) -> Path:
    """Write ``directory/<name>.zip`` (with directory entries, like the official zips)."""
    path = directory / f"{name}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}/", b"")
        for alphabet in alphabets:
            archive.writestr(f"{name}/{alphabet}/", b"")
            # Like the official ids: one per character, the same in every archive.
            first_id = 100 * (10 + _stable_hash(alphabet) % 90)
            for number in range(1, characters + 1):
                character_id = first_id + number
                folder = f"{name}/{alphabet}/character{number:02d}"
                archive.writestr(f"{folder}/", b"")
                for drawer in range(1, drawers + 1):
                    png = io.BytesIO()
                    drawing(alphabet, number, drawer).save(png, format="PNG")
                    archive.writestr(
                        f"{folder}/{character_id:04d}_{drawer:02d}.png", png.getvalue()
                    )
                character_id += 1
    return path


def write_background(directory: Path, alphabets: int = 4, characters: int = 8) -> Path:
    """A small ``images_background.zip``: ``alphabets`` x ``characters`` x 20 drawings."""
    names = [f"Alphabet_{index:02d}" for index in range(1, alphabets + 1)]
    return write_archive(directory, "images_background", names, characters)
