"""hedprep.options: the command-line value syntaxes and their one-line errors."""

from __future__ import annotations

import pytest

from hedprep.errors import OptionError
from hedprep.options import parse_compression, parse_frame_counts, parse_scales, parse_size
from hedprep.shards import Compression


def test_parse_frame_counts() -> None:
    assert parse_frame_counts("train=8,val=4,test=2") == {"train": 8, "val": 4, "test": 2}
    assert parse_frame_counts(" train_extra = 3 ") == {"train_extra": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "expected split=count"), ("train=8,", "expected split=count"), ("train:8", "expected split=count"),
     ("train=-1", "expected split=count"), ("foo=1", "unknown split 'foo'"), ("val=1,val=2", "given twice")],
)
def test_parse_frame_counts_errors(text: str, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        parse_frame_counts(text)


def test_parse_size() -> None:
    assert parse_size("128x256") == (128, 256)
    assert parse_size(" 64 X 32 ") == (64, 32)


@pytest.mark.parametrize("text", ["128", "128x", "x256", "128*256", "-1x256", "1.5x2", "0x256", "128x256x3"])
def test_parse_size_errors(text: str) -> None:
    with pytest.raises(OptionError, match="size"):
        parse_size(text)


def test_parse_size_takes_a_minimum_and_the_callers_error() -> None:
    assert parse_size("16x16", "--eval-size", minimum=16) == (16, 16)
    with pytest.raises(OptionError, match=r"^--eval-size 16x8: expected HEIGHTxWIDTH of at least 16x16, e\.g\. "):
        parse_size("16x8", "--eval-size", minimum=16)

    class CallersError(Exception):
        pass

    with pytest.raises(CallersError, match=r"^--stages 12:34: expected HEIGHTxWIDTH of at least 1x1"):
        parse_size("12:34", "--stages", error=CallersError)


def test_parse_compression():
    assert parse_compression("gzip") == Compression("gzip", 1) and str(parse_compression("GZIP:9")) == "gzip:9"
    assert parse_compression("zstd") == Compression("zstd", 3) and str(parse_compression("lz4")) == "lz4"
    for bad, message in [("brotli", "choose one of"), ("gzip:10", "level 0-9"), ("lzf:3", "no level"),
                         ("zstd:x", "level 1-22")]:
        with pytest.raises(OptionError, match=message):
            parse_compression(bad)


def test_parse_scales():
    assert parse_scales("0.5,1,1.5") == (0.5, 1.0, 1.5) and parse_scales("1") == (1.0,)
    for bad, message in [("0", "--scales 0: scales must be positive"), ("1,-2", "--scales 1,-2: scales must be"),
                         ("a,b", "--scales a,b: expected comma-separated numbers"), ("", "must be positive")]:
        with pytest.raises(OptionError, match=message):
            parse_scales(bad)


def test_option_errors_show_the_text_as_typed():
    with pytest.raises(OptionError, match=r"^--size 12:34: expected HEIGHTxWIDTH"):
        parse_size("12:34")
    with pytest.raises(OptionError, match=r"^--compression gzip:10: gzip takes a level 0-9$"):
        parse_compression("gzip:10")
