"""Datasets that ship with the machine, so the demo and the tests need no download.

* ``emoji``: every colour glyph of the Noto Color Emoji font (Debian/Ubuntu package
  ``fonts-noto-color-emoji``), rendered with Pillow, cropped to the glyph, centred on a square of a
  fixed background colour and resized. Single code points come from the font's ``cmap``; emoji
  *sequences* (flags, keycaps, skin tones, ZWJ sequences) come from the font's ligature table and are
  kept only when Pillow's layout engine (libraqm) shapes them into one glyph. Captions are Unicode
  names (``unicodedata.name(...).lower()``); for sequences a name is *derived*: ``flag: us``,
  ``flag: gb-sct``, ``keycap: 7``, ``thumbs up sign: medium skin tone``,
  ``man + personal computer: light skin tone`` (ZWJ components joined by ``+``, skin tones after a
  colon). Code points newer than Python's Unicode tables are named ``emoji u+1fa75`` so the image set
  does not depend on the Python version. Class labels are nine approximate Unicode (CLDR) emoji
  groups from a fixed table of code-point ranges (:data:`EMOJI_CLASSES`); a sequence takes the class
  of its first code point.
* ``digits``: scikit-learn's bundled ``load_digits`` (1,797 grey 8x8 images) upscaled to RGB, dark
  ink on white, labels 0-9, captions ``digit three``; the fallback when the font is absent.

Both are rendered once and cached as ``<cache_dir>/<name>_<size>[_n<limit>].npz`` (``images`` uint8
``[N, H, W, 3]``, ``labels``, ``caption_ids``, ``captions``, ``class_names``, ``keys``); later loads read
the file. The train/validation split is deterministic: every ``val_every``-th image is held out.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
import unicodedata
import uuid
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

# Bump when the rendering or the file layout changes: older cache files are then re-rendered.
CACHE_VERSION = 1

FONT_APT_COMMAND = "apt-get install -y fonts-noto-color-emoji"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian, Ubuntu
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
    "/usr/share/fonts/google-noto-color-emoji/NotoColorEmoji.ttf",  # Fedora
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
)
# Noto Color Emoji is a bitmap (CBDT) font whose only strike is 109 px.
FONT_SIZE = 109
# Blank border around the glyph, as a fraction of the glyph's larger side.
_MARGIN = 1 / 16

EMOJI_CLASSES = (
    "smileys & emotion",
    "people & body",
    "animals & nature",
    "food & drink",
    "travel & places",
    "activities",
    "objects",
    "symbols",
    "flags",
)

# Code-point ranges of each group (hex, inclusive, no overlaps between groups: a test checks). An
# approximation of the CLDR emoji groups that is good enough for class-conditional toys.
_GROUP_RANGES = {
    "smileys & emotion": (
        "1F600-1F644 1F648-1F64A 1F910-1F917 1F920-1F925 1F927-1F92F 1F970-1F976 1F978-1F97A 1F9D0"
        " 1FAE0-1FAE5 1FAE7-1FAE8 263A 2639 2620 1F480 1F479-1F47B 1F47D-1F47F 1F48B-1F48C 1F493-1F49F"
        " 1F4A2-1F4A6 1F4A8-1F4A9 1F4AB-1F4AD 1F4AF 1F5A4 1F5E8 1F5EF 1F573 1F90D-1F90E 1F9E1"
        " 1FA75-1FA77 2763-2764"
    ),
    "people & body": (
        "1F385 1F3C2-1F3C4 1F3C7 1F3CA-1F3CC 1F440-1F450 1F463-1F478 1F47C 1F481-1F483 1F485-1F487"
        " 1F48F 1F491 1F4AA 1F574-1F575 1F57A 1F590 1F595-1F596 1F5E3 1F645-1F647 1F64B-1F64F 1F6A3"
        " 1F6B4-1F6B6 1F6C0 1F6CC 1F90C 1F90F 1F918-1F91F 1F926 1F930-1F93A 1F93C-1F93E 1F977"
        " 1F9B0-1F9B9 1F9BB 1F9BE-1F9BF 1F9CD-1F9CF 1F9D1-1F9E0 1FAC0-1FAC5 1FAE6 1FAF0-1FAF8 261D"
        " 26F7 26F9 270A-270D"
    ),
    "animals & nature": (
        "1F331-1F335 1F337-1F344 1F400-1F43F 1F490 1F4AE 1F54A 1F577-1F578 1F940 1F980-1F9AE"
        " 1FAB0-1FAB4 1FAB6-1FABF 1FACE-1FACF 2618 1F3F5"
    ),
    "food & drink": "1F32D-1F330 1F336 1F345-1F37F 1F382 1F942-1F944 1F950-1F96F 1F9C0-1F9CB 1FAD0-1FADB 2615",
    "travel & places": (
        "1F300-1F32C 1F3A0-1F3A2 1F3AA 1F3CD-1F3CE 1F3D4-1F3F0 1F488 1F492 1F4A7 1F4BA 1F525"
        " 1F54B-1F54D 1F550-1F567 1F5FA-1F5FF 1F680-1F6A2 1F6A4-1F6A8 1F6CE 1F6D1 1F6D5-1F6D6"
        " 1F6DC-1F6DF 1F6E0-1F6F6 1F6F8-1F6FC 1F9BC-1F9BD 1F9ED 1F9F1 1F9F3 1FAA8 1FAB5 231A-231B"
        " 23F0-23F3 2600-2604 2614 2668 2693 26A1 26C4-26C5 26C8 26E9-26EA 26F0-26F2 26F4-26F5 26FA"
        " 26FD 2708 2744 2B50"
    ),
    "activities": (
        "1F004 1F0CF 1F380-1F381 1F383-1F384 1F386-1F38B 1F38D-1F391 1F396-1F397 1F39F 1F3A3 1F3A8 1F3AB"
        " 1F3AD-1F3B4 1F3BE-1F3C0 1F3C5-1F3C6 1F3C8-1F3C9 1F3CF-1F3D3 1F3F8 1F52E 1F579 1F5BC 1F93F"
        " 1F945 1F947-1F94F 1F6F7 1F9E7-1F9E9 1F9F5-1F9F6 1F9F8 1F9FF 1FA80-1FA86 1FAA9 2660-2667 265F"
        " 26BD-26BE 26F3 26F8 2728"
    ),
    "objects": (
        "1F393 1F399-1F39B 1F39E 1F3A4-1F3A7 1F3A9 1F3AC 1F3B5-1F3BD 1F3F7 1F3F9-1F3FA 1F451-1F462"
        " 1F484 1F48D-1F48E 1F4A1 1F4B0-1F4B9 1F4BB-1F4FF 1F507-1F517 1F526-1F52D 1F56F-1F570 1F576"
        " 1F6AA 1F6AC 1F6BD 1F6BF 1F6C1 1F6CB 1F6CD 1F6CF 1F6D2 1F6D7 1F97B-1F97F 1F9AF 1FA70-1FA74 1FA78-1FA7C"
        " 1FA87-1FA88 1FA90-1FAA7 1FAAA-1FAAF 2328 260E 2692 2694-2697 2699 26B0-26B1 26CF 26D1 26D3"
        " 2702 2709 270F 2712"
    ),
    "symbols": (
        "1F518-1F524 1F6AB 1F6AD-1F6B3 1F6B7-1F6BC 1F6BE 1F6C2-1F6C5 1F6D0 1F7E0-1F7F0 1F170-1F1E5 1F200-1F251"
        " 269B 2648-2653"
    ),
    "flags": "1F1E6-1F1FF 1F3C1 1F38C 1F3F3-1F3F4 1F6A9 E0020-E007F",
}
# Where no specific range matches: these blocks default to a group, everything else is a symbol.
_FALLBACK_RANGES = (
    (0x1F300, 0x1F5FF, "objects"),
    (0x1F680, 0x1F6FF, "travel & places"),
    (0x1F900, 0x1F9FF, "objects"),
    (0x1FA70, 0x1FAFF, "objects"),
)

_ZWJ, _VS16, _KEYCAP = 0x200D, 0xFE0F, 0x20E3
_SKIN_TONES = {
    0x1F3FB: "light skin tone",
    0x1F3FC: "medium-light skin tone",
    0x1F3FD: "medium skin tone",
    0x1F3FE: "medium-dark skin tone",
    0x1F3FF: "dark skin tone",
}
_REGIONAL = range(0x1F1E6, 0x1F200)
_TAGS = range(0xE0020, 0xE0080)


def _parse_ranges(spec: str) -> list[tuple[int, int]]:
    out = []
    for item in spec.split():
        lo, _, hi = item.partition("-")
        out.append((int(lo, 16), int(hi or lo, 16)))
    return out


def group_ranges() -> list[tuple[int, int, str]]:
    """The specific (start, end, group) ranges of :data:`EMOJI_CLASSES`, sorted by start."""
    return sorted((lo, hi, g) for g, spec in _GROUP_RANGES.items() for lo, hi in _parse_ranges(spec))


_SORTED_RANGES = group_ranges()
_RANGE_STARTS = [r[0] for r in _SORTED_RANGES]


def emoji_group(codepoint: int) -> str:
    """The (approximate) Unicode emoji group of one code point."""
    i = bisect.bisect_right(_RANGE_STARTS, codepoint) - 1
    if i >= 0 and _SORTED_RANGES[i][0] <= codepoint <= _SORTED_RANGES[i][1]:
        return _SORTED_RANGES[i][2]
    for lo, hi, group in _FALLBACK_RANGES:
        if lo <= codepoint <= hi:
            return group
    return "symbols"


def _codepoint_name(cp: int) -> str:
    name = unicodedata.name(chr(cp), None)
    return name.lower() if name else f"emoji u+{cp:04x}"


def emoji_name(seq: Sequence[int]) -> str:
    """A caption for one emoji: the Unicode name, or one derived from the parts of a sequence."""
    seq = [cp for cp in seq if cp != _VS16]
    if len(seq) == 2 and all(cp in _REGIONAL for cp in seq):
        return "flag: " + "".join(chr(ord("a") + cp - _REGIONAL.start) for cp in seq)
    if len(seq) > 2 and seq[1] in _TAGS:
        letters = "".join(chr(cp - 0xE0000) for cp in seq[1:] if cp in _TAGS and cp != 0xE007F)
        return f"flag: {letters[:2]}-{letters[2:]}"
    if len(seq) == 2 and seq[1] == _KEYCAP:
        return f"keycap: {chr(seq[0])}"
    parts = [_codepoint_name(cp) for cp in seq if cp != _ZWJ and cp not in _SKIN_TONES]
    tones = [_SKIN_TONES[cp] for cp in seq if cp in _SKIN_TONES]
    name = " + ".join(parts)
    return f"{name}: {', '.join(tones)}" if tones else name


# ---------------------------------------------------------------------------------------------- font


def find_emoji_font(font_path: str | None = None) -> str | None:
    """The Noto Color Emoji font file: ``font_path`` if given (and present), else a known location."""
    if font_path:
        return font_path if os.path.isfile(font_path) else None
    return next((p for p in FONT_CANDIDATES if os.path.isfile(p)), None)


def _can_shape_sequences() -> bool:
    from PIL import features

    return bool(features.check("raqm"))


def _is_single_codepoint_emoji(cp: int) -> bool:
    """Code points of the cmap that are components or text, not emoji of their own."""
    return not (
        cp < 0xA9
        or cp in (_ZWJ, _VS16, _KEYCAP)
        or cp in _SKIN_TONES
        or cp in _REGIONAL
        or cp in _TAGS
        or 0xE000 <= cp <= 0xF8FF  # private use
        or cp >= 0xF0000
    )


def enumerate_emoji(font_path: str, *, sequences: bool = True) -> list[tuple[int, ...]]:
    """All emoji of the font as code-point tuples, sorted: cmap singles plus ligature sequences.

    The ligature table of Noto Color Emoji also holds each ZWJ sequence in reverse (for right-to-left
    text) mapped to the same glyph; the font numbers its ligature glyphs in the sorted order of their
    logical sequences, so of the candidates of a glyph we keep the one that continues that order.
    """
    from fontTools.ttLib import TTFont

    font = TTFont(font_path, lazy=True)
    try:
        cmap = font.getBestCmap()
        glyph_id = font.getReverseGlyphMap()
        seen_glyphs: set[str] = set()
        out: list[tuple[int, ...]] = []
        for cp in sorted(cmap):
            glyph = cmap[cp]
            if _is_single_codepoint_emoji(cp) and glyph not in seen_glyphs:
                seen_glyphs.add(glyph)
                out.append((cp,))
        if not sequences or "GSUB" not in font:
            return sorted(out)
        glyph_to_cp: dict[str, int] = {}
        for cp, glyph in sorted(cmap.items()):
            glyph_to_cp.setdefault(glyph, cp)
        candidates: dict[str, list[tuple[int, ...]]] = {}
        for lookup in font["GSUB"].table.LookupList.Lookup:
            if lookup.LookupType != 4:  # ligature substitution
                continue
            for sub in lookup.SubTable:
                for first, ligatures in sub.ligatures.items():
                    for lig in ligatures:
                        glyphs = [first, *lig.Component]
                        if all(g in glyph_to_cp for g in glyphs):
                            candidates.setdefault(lig.LigGlyph, []).append(
                                tuple(glyph_to_cp[g] for g in glyphs)
                            )
        previous: tuple[int, ...] = ()
        for glyph in sorted(candidates, key=glyph_id.__getitem__):
            options = sorted(candidates[glyph])
            later = [s for s in options if s >= previous]
            seq = later[0] if later else options[0]
            previous = seq
            if glyph in seen_glyphs or seq[0] in _TAGS or (seq[0] == 0x1F3F4 and len(seq) == 2):
                continue  # a duplicate picture, or a tag sequence without a region
            seen_glyphs.add(glyph)
            out.append(seq)
        return sorted(out)
    finally:
        font.close()


def _render_glyph(font, text: str, size: int, background: tuple[int, int, int]) -> np.ndarray | None:
    """One emoji on a square ``size`` x ``size`` RGB canvas, or None when it renders empty."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("RGBA", (max(right, 1) + 2, max(bottom, 1) + 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    w, h = glyph.size
    side = round(max(w, h) * (1 + 2 * _MARGIN))
    square = Image.new("RGBA", (side, side), (*background, 255))
    square.alpha_composite(glyph, ((side - w) // 2, (side - h) // 2))
    return np.asarray(square.convert("RGB").resize((size, size), Image.LANCZOS))


def _subset(n: int, limit: int | None) -> np.ndarray:
    """Evenly spaced indices of ``limit`` of ``n`` items (all of them without a limit)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max(limit, 1)).round().astype(np.int64))


def render_emoji(
    image_size: int,
    *,
    font_path: str,
    limit: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> dict[str, np.ndarray]:
    """Renders the emoji of the font (an evenly spaced ``limit`` of them) into arrays."""
    from PIL import ImageFont

    with_sequences = _can_shape_sequences()
    if not with_sequences:
        log.warning(
            "Pillow was built without libraqm, so emoji sequences (flags, skin tones, ZWJ) cannot be "
            "shaped: rendering single code points only."
        )
    seqs = enumerate_emoji(font_path, sequences=with_sequences)
    seqs = [seqs[i] for i in _subset(len(seqs), limit)]
    font = ImageFont.truetype(font_path, FONT_SIZE)
    advance = font.getlength("\U0001f600")
    images, names, groups, keys = [], [], [], []
    for seq in seqs:
        text = "".join(map(chr, seq))
        if len(seq) > 1 and abs(font.getlength(text) - advance) > 1:
            continue  # the layout engine did not form one glyph
        image = _render_glyph(font, text, image_size, tuple(background))
        if image is None:
            continue
        images.append(image)
        names.append(emoji_name(seq))
        groups.append(EMOJI_CLASSES.index(emoji_group(seq[0])))
        keys.append(" ".join(f"{cp:04X}" for cp in seq))
    n = len(images)
    return {
        "images": np.stack(images) if n else np.zeros((0, image_size, image_size, 3), np.uint8),
        "labels": np.asarray(groups, np.int32),
        "caption_ids": np.arange(n, dtype=np.int32),
        "captions": np.asarray(names, dtype=str),
        "class_names": np.asarray(EMOJI_CLASSES, dtype=str),
        "keys": np.asarray(keys, dtype=str),
    }


_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def render_digits(image_size: int, *, limit: int | None = None) -> dict[str, np.ndarray]:
    """scikit-learn's bundled 8x8 digits, upscaled to ``image_size`` RGB (dark ink on white)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    idx = _subset(len(digits.images), limit)
    grey = (255 - digits.images[idx] * (255 / 16)).round().clip(0, 255).astype(np.uint8)
    big = np.stack(
        [np.asarray(Image.fromarray(g).resize((image_size, image_size), Image.BICUBIC)) for g in grey]
    )
    labels = digits.target[idx].astype(np.int32)
    return {
        "images": np.repeat(big[..., None], 3, axis=-1),
        "labels": labels,
        "caption_ids": labels.copy(),
        "captions": np.asarray([f"digit {w}" for w in _DIGIT_WORDS], dtype=str),
        "class_names": np.asarray(_DIGIT_WORDS, dtype=str),
        "keys": np.asarray([str(i) for i in idx], dtype=str),
    }


# --------------------------------------------------------------------------------------------- cache


@dataclasses.dataclass(frozen=True)
class EmbeddedDataset:
    """An embedded dataset held in memory (all splits)."""

    name: str  # "emoji" or "digits"
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N]
    caption_ids: np.ndarray  # int32 [N], index into `captions`
    captions: tuple[str, ...]
    class_names: tuple[str, ...]
    keys: tuple[str, ...]  # emoji code points ("1F600", "1F468 200D 1F4BB") or digit indices
    path: str  # the cache file

    def __len__(self) -> int:
        return len(self.images)

    def without_skin_tones(self) -> EmbeddedDataset:
        """The emoji without skin-tone variants (3,881 -> 1,991 with Noto 2.042; "people & body"
        drops from 59% to 20% of the images). Captions keep their indices."""
        tones = {f"{cp:04X}" for cp in _SKIN_TONES}
        keep = np.asarray([not tones.intersection(k.split()) for k in self.keys], bool)
        return dataclasses.replace(
            self,
            images=self.images[keep],
            labels=self.labels[keep],
            caption_ids=self.caption_ids[keep],
            keys=tuple(k for k, m in zip(self.keys, keep, strict=True) if m),
        )

    def split_indices(self, split: str, val_every: int) -> np.ndarray:
        """Indices of a split: every ``val_every``-th image is validation, the rest train."""
        idx = np.arange(len(self))
        if val_every <= 0:
            return idx
        held_out = idx % val_every == 0
        if split == "train":
            return idx[~held_out]
        if split in ("validation", "val", "test"):
            return idx[held_out]
        raise ValueError(f"Unknown split {split!r} for the {self.name} dataset: use 'train' or 'validation'.")


def cache_path(cache_dir: str, name: str, image_size: int, limit: int | None) -> str:
    suffix = f"_n{limit}" if limit is not None else ""
    return os.path.join(cache_dir, f"{name}_{image_size}{suffix}.npz")


def _write_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes the .npz next to its final place and renames it, so concurrent readers never see half."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_embedded(
    name: str,
    *,
    cache_dir: str,
    image_size: int,
    font_path: str | None = None,
    limit: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> EmbeddedDataset:
    """Loads ``emoji`` or ``digits`` from the cache, rendering and caching it first if needed."""
    if name not in ("emoji", "digits"):
        raise ValueError(f"Unknown embedded dataset {name!r}: use 'emoji' or 'digits'.")
    path = cache_path(cache_dir, name, image_size, limit)
    arrays = None
    if os.path.isfile(path):
        try:
            with np.load(path) as f:
                if int(f["version"]) == CACHE_VERSION:
                    arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, KeyError) as e:
            log.warning("Re-rendering the %s dataset: cannot read its cache %s (%s).", name, path, e)
    if arrays is None:
        if name == "emoji":
            font = find_emoji_font(font_path)
            if font is None:
                raise FileNotFoundError(_font_missing_message(font_path))
            arrays = render_emoji(image_size, font_path=font, limit=limit, background=background)
        else:
            arrays = render_digits(image_size, limit=limit)
        arrays["version"] = np.asarray(CACHE_VERSION)
        _write_atomically(path, arrays)
        log.info("Rendered %d %s images at %d px into %s.", len(arrays["images"]), name, image_size, path)
    return EmbeddedDataset(
        name=name,
        images=arrays["images"],
        labels=arrays["labels"].astype(np.int32),
        caption_ids=arrays["caption_ids"].astype(np.int32),
        captions=tuple(str(c) for c in arrays["captions"]),
        class_names=tuple(str(c) for c in arrays["class_names"]),
        keys=tuple(str(k) for k in arrays["keys"]),
        path=path,
    )


def _font_missing_message(font_path: str | None) -> str:
    where = f"at {font_path}" if font_path else f"in {', '.join(FONT_CANDIDATES[:2])} or the other usual places"
    return (
        f"The Noto Color Emoji font was not found {where}: install it with `{FONT_APT_COMMAND}`, set "
        "config.data.font_path, or use config.data.name = 'digits'."
    )


def emoji_available(font_path: str | None = None) -> tuple[bool, str]:
    """Whether the emoji dataset can be rendered here, and if not, why and how to fix it (a clause)."""
    if find_emoji_font(font_path) is None:
        where = f"at {font_path}" if font_path else "in the usual places"
        return False, (
            f"the Noto Color Emoji font is not installed {where}; install it with `{FONT_APT_COMMAND}` "
            "(or set config.data.font_path)"
        )
    try:
        import fontTools  # noqa: F401
    except ImportError:
        return False, "fontTools is not installed; install it with `pip install fonttools`"
    return True, ""
