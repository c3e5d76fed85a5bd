"""Pixel checks on viewer screenshots: is the picture there, in its colours, and upright?

Each check finds the picture in the screenshot, measures it, and returns a `Finding`: the numbers,
and one line per problem (no problem = pass). The colours are those of the fixture
(`hedprep fixture`): sky at the top of the frame, road at the bottom.
"""
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

SKY_LABEL = (70, 130, 180)   # Cityscapes colour of trainId 10, sky
ROAD_LABEL = (128, 64, 128)  # trainId 0, road
LABEL_TOLERANCE = 6          # viewers may smooth a little when they scale
MIN_SHARE = 0.02             # of the picture's pixels, for each colour a check counts


@dataclass
class Finding:
    box: tuple               # (left, top, right, bottom) of the picture in the screenshot
    numbers: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)


def load(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def find_picture(shot):
    """The box of the largest solid region that is not light, grey user interface (text, lines and
    small widgets are eroded away first)."""
    lightest = shot.min(axis=2)
    chroma = shot.max(axis=2) - lightest
    content = (lightest < 215) | (chroma > 40)
    solid = ndimage.binary_erosion(content, structure=np.ones((7, 7)))
    regions, count = ndimage.label(solid)
    if count == 0:
        return None
    largest = 1 + np.argmax(ndimage.sum_labels(solid, regions, range(1, count + 1)))
    rows, cols = np.nonzero(regions == largest)
    grow = 3  # what the erosion took off each side
    return (int(max(cols.min() - grow, 0)), int(max(rows.min() - grow, 0)),
            int(min(cols.max() + grow + 1, shot.shape[1])), int(min(rows.max() + grow + 1, shot.shape[0])))


def crop(shot, box):
    left, top, right, bottom = box
    return shot[top:bottom, left:right]


def near(picture, color, tolerance=LABEL_TOLERANCE):
    return (np.abs(picture - np.array(color)) <= tolerance).all(axis=2)


def mean_row(mask):
    rows = np.nonzero(mask)[0]
    return float(rows.mean()) if rows.size else float("nan")


def compare_upright(picture, truth):
    """Mean absolute difference to the stored picture, drawn upright and flipped upside down."""
    size = (picture.shape[1], picture.shape[0])
    upright = np.asarray(Image.fromarray(truth).resize(size, Image.BILINEAR)).astype(np.int16)
    return float(np.abs(picture - upright).mean()), float(np.abs(picture - upright[::-1]).mean())


def above(finding, top_name, top_mask, bottom_name, bottom_mask):
    """Record counts and mean rows of two colours; the first must lie above the second."""
    area = top_mask.size
    for name, mask in ((top_name, top_mask), (bottom_name, bottom_mask)):
        finding.numbers[f"{name} px"] = int(mask.sum())
        finding.numbers[f"{name} row"] = round(mean_row(mask), 1)
        if mask.sum() < MIN_SHARE * area:
            finding.problems.append(f"only {int(mask.sum())} {name} pixels of {area}")
    if not finding.problems and not mean_row(top_mask) < mean_row(bottom_mask):
        finding.problems.append(f"{top_name} (mean row {mean_row(top_mask):.0f}) is not above "
                                f"{bottom_name} (mean row {mean_row(bottom_mask):.0f}): upside down?")


def check_matches(finding, picture, truth):
    upright, flipped = compare_upright(picture, truth)
    finding.numbers["diff upright"], finding.numbers["diff flipped"] = round(upright, 1), round(flipped, 1)
    if not upright < flipped:
        finding.problems.append(f"closer to the stored picture upside down ({flipped:.0f}) "
                                f"than upright ({upright:.0f})")


def check_label(shot, truth, box=None):
    """Cityscapes colours: many sky and road pixels, the sky above the road."""
    finding = Finding(box or find_picture(shot))
    if finding.box is None:
        return Finding(None, problems=["no picture found"])
    picture = crop(shot, finding.box)
    above(finding, "sky (70,130,180)", near(picture, SKY_LABEL), "road (128,64,128)", near(picture, ROAD_LABEL))
    check_matches(finding, picture, truth)
    return finding


def check_rgb(shot, truth, box=None):
    """The photo: light-blue sky above the dark road."""
    finding = Finding(box or find_picture(shot))
    if finding.box is None:
        return Finding(None, problems=["no picture found"])
    picture = crop(shot, finding.box)
    red, green, blue = picture[..., 0], picture[..., 1], picture[..., 2]
    light_blue = (blue >= 170) & (blue - red >= 50) & (green - red >= 20) & (red >= 90)
    dark = picture.max(axis=2) < 80
    above(finding, "light-blue sky", light_blue, "dark", dark)
    check_matches(finding, picture, truth)
    return finding


def check_edge(shot, truth, box):
    """The edge map in grey: R = G = B, mostly dark (no edge) with light lines (edges)."""
    finding = Finding(box)
    picture = crop(shot, box)
    spread = picture.max(axis=2) - picture.min(axis=2)
    shares = {"grey": (spread <= 6).mean(), "dark": (picture.max(axis=2) <= 40).mean(),
              "light": (picture.min(axis=2) >= 160).mean()}
    finding.numbers.update({f"{name} %": round(100 * float(share), 1) for name, share in shares.items()})
    for name, least in (("grey", 0.97), ("dark", 0.2), ("light", 0.01)):
        if shares[name] < least:
            finding.problems.append(f"{name} pixels are {100 * shares[name]:.1f}% of the picture, "
                                    f"expected at least {100 * least:.0f}%")
    check_matches(finding, picture, truth)
    return finding
