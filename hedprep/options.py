"""The syntaxes of command-line values: text in, values out, one-line errors that name the option.

`--size 128x256`, `--frames train=8,val=4`, `--scales 0.5,1,1.5`, `--compression gzip:6`. The CLI
parses with these; library functions take the parsed values.
"""

from __future__ import annotations

import re

from hedprep.cityscapes import SPLITS
from hedprep.errors import OptionError
from hedprep.shards import CODECS, Compression


def parse_size(text: str, option: str = "--size", minimum: int = 1,
               error: type[Exception] = OptionError) -> tuple[int, int]:
    """'128x256' (height x width) -> (128, 256): the one parser of sizes, in hedprep and segnet alike.

    Args:
        text: the size as typed; x or X between the sides, spaces allowed around them.
        option: the option named in the error, e.g. --eval-size.
        minimum: the smallest height and width allowed.
        error: the exception raised, e.g. segnet's SegnetOptionError (default: OptionError).
    """
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None or min(int(match[1]), int(match[2])) < minimum:
        raise error(f"{option} {text}: expected HEIGHTxWIDTH of at least {minimum}x{minimum}, e.g. 128x256")
    return int(match[1]), int(match[2])


def parse_frame_counts(text: str, option: str = "--frames") -> dict[str, int]:
    """'train=8,val=4,test=2' -> {'train': 8, 'val': 4, 'test': 2}."""
    counts: dict[str, int] = {}
    for item in text.split(","):
        match = re.fullmatch(r"\s*([a-z_]+)\s*=\s*(\d+)\s*", item)
        if match is None:
            raise OptionError(f"{option} {text}: expected split=count pairs such as train=8,val=4")
        split, count = match[1], int(match[2])
        if split not in SPLITS:
            raise OptionError(f"{option} {text}: unknown split '{split}' (one of {', '.join(SPLITS)})")
        if split in counts:
            raise OptionError(f"{option} {text}: split '{split}' given twice")
        counts[split] = count
    return counts


def parse_scales(text: str, option: str = "--scales") -> tuple[float, ...]:
    """'0.5,1,1.5' -> (0.5, 1.0, 1.5): positive numbers."""
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise OptionError(f"{option} {text}: expected comma-separated numbers such as 0.5,1,1.5") from None
    if not scales or any(not s > 0 for s in scales):
        raise OptionError(f"{option} {text}: scales must be positive numbers, such as 0.5,1,1.5")
    return scales


def parse_compression(text: str, option: str = "--compression") -> Compression:
    """'gzip' -> gzip level 1; 'gzip:6', 'zstd:9', 'lzf', 'lz4', 'none'."""
    name, _, level_text = text.strip().lower().partition(":")
    codec = CODECS.get(name)
    if codec is None:
        raise OptionError(f"{option} {text}: choose one of {', '.join(CODECS)} (gzip and zstd take :LEVEL)")
    if not level_text:
        return Compression(name, codec.default_level)
    limits = codec.levels
    if limits is None or not level_text.isdigit() or not limits[0] <= int(level_text) <= limits[1]:
        allowed = f"a level {limits[0]}-{limits[1]}" if limits else "no level"
        raise OptionError(f"{option} {text}: {name} takes {allowed}")
    return Compression(name, int(level_text))
