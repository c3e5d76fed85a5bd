"""A tiny synthetic dataset in Cityscapes' exact layout, for tests and demos without the real data.

Every frame is a street scene drawn as a list of labelled polygons (sky, buildings, trees, road,
sidewalk, poles with signs and lights, vehicles, people, and void regions such as the ego vehicle).
The polygons are rasterised once into the instanceIds map; labelIds, the colour map and
`_polygons.json` all derive from the same polygons, as in real Cityscapes. Each class is painted
with its own mean colour and texture (grain, blotches, stripes, windows, gradient) so that a small
segmenter can tell them apart. See `docs/dataset.md` for the folder rules.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np

from hedprep.cityscapes import LABELS_BY_NAME, SPLITS, is_labeled, labelid_to_color
from hedprep.errors import HedprepError, OptionError
from hedprep.images import encode_png

DEFAULT_FRAME_COUNTS: Mapping[str, int] = MappingProxyType({"train": 8, "val": 4, "test": 2})
MIN_SIDE = 32
MARKER_FILE = "hedprep-fixture.json"  # marks a folder as ours, so a rerun may replace it
CITIES = {
    "train": ("aachen", "bochum"),
    "val": ("frankfurt", "lindau"),
    "test": ("berlin", "bielefeld"),
    "train_extra": ("augsburg", "bad-honnef"),
}
ANNOTATED_FRAME = 19  # Cityscapes annotates the 20th frame of each 30-frame snippet

# name: (mean RGB, texture, amplitude). Textures: see _texture_patterns.
APPEARANCE: dict[str, tuple[tuple[int, int, int], str, float]] = {
    "unlabeled": ((20, 20, 20), "flat", 0),
    "ego vehicle": ((35, 30, 40), "vgradient", 12),
    "rectification border": ((0, 0, 0), "flat", 0),
    "out of roi": ((10, 10, 30), "flat", 0),
    "static": ((140, 110, 70), "grain", 10),
    "dynamic": ((110, 60, 20), "grain", 10),
    "ground": ((100, 85, 60), "blotch", 18),
    "parking": ((150, 130, 150), "hstripes", 10),
    "road": ((80, 78, 84), "grain", 6),
    "sidewalk": ((175, 165, 160), "hstripes", 14),
    "building": ((125, 105, 95), "windows", 28),
    "wall": ((200, 190, 150), "blotch", 10),
    "fence": ((150, 120, 80), "vstripes", 30),
    "pole": ((95, 100, 110), "flat", 0),
    "traffic light": ((30, 40, 30), "vgradient", 20),
    "traffic sign": ((230, 200, 40), "flat", 0),
    "vegetation": ((60, 120, 35), "blotch", 35),
    "terrain": ((145, 160, 80), "grain", 18),
    "sky": ((150, 195, 240), "vgradient", 15),
    "person": ((170, 50, 90), "grain", 20),
    "rider": ((220, 60, 30), "grain", 20),
    "car": ((30, 50, 160), "vgradient", 25),
    "truck": ((60, 90, 60), "vstripes", 12),
    "bus": ((230, 130, 20), "windows", 20),
    "bicycle": ((110, 20, 160), "flat", 0),
}
TEXTURES = ("flat", "grain", "blotch", "hstripes", "vstripes", "windows", "vgradient")


@dataclass(frozen=True)
class FixtureSummary:
    """What `make_fixture` wrote."""

    root: Path
    frames: dict[str, int]  # split -> number of frames
    size: tuple[int, int]  # (height, width)
    seed: int

    @property
    def total_frames(self) -> int:
        return sum(self.frames.values())


def _check_size(size: tuple[int, int]) -> None:
    if len(size) != 2 or min(size) < MIN_SIDE:
        raise OptionError(f"--size {'x'.join(map(str, size))}: height and width must be at least {MIN_SIDE} pixels")


def _prepare_root(root: Path) -> None:
    """Create `root`, or empty a previous fixture there; refuse any other non-empty folder."""
    if root.exists() and not root.is_dir():
        raise HedprepError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not (root / MARKER_FILE).is_file():
            raise HedprepError(f"{root}: folder is not empty and holds no {MARKER_FILE}; choose an empty folder")
        for name in ("leftImg8bit", "gtFine", "gtCoarse", MARKER_FILE):
            path = root / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def make_fixture(
    root: str | os.PathLike,
    frames: Mapping[str, int] = DEFAULT_FRAME_COUNTS,
    size: tuple[int, int] = (128, 256),
    seed: int = 0,
) -> FixtureSummary:
    """Write a synthetic Cityscapes-layout dataset of `frames` per split, `size` = (height, width).

    The same seed gives byte-identical files. Each frame's random stream depends only on
    (seed, split, index), so asking for more frames of one split never changes the others.
    `root` must be missing, empty, or a previous fixture (which is replaced).
    """
    for split, count in frames.items():
        if split not in SPLITS:
            raise OptionError(f"--frames: unknown split '{split}' (one of {', '.join(SPLITS)})")
        if count < 0:
            raise OptionError(f"--frames: split {split} has a negative frame count ({count})")
    if sum(frames.values()) == 0:
        raise OptionError("--frames: no frames requested")
    size = (int(size[0]), int(size[1]))
    _check_size(size)
    root = Path(root)
    _prepare_root(root)
    counts = {split: int(frames[split]) for split in SPLITS if frames.get(split)}
    for split, count in counts.items():
        cities = CITIES[split]
        for index in range(count):
            rng = np.random.default_rng((seed, SPLITS.index(split), index))
            city = cities[index % len(cities)]
            frame_id = f"{city}_{index // len(cities):06d}_{ANNOTATED_FRAME:06d}"
            _write_frame(root, split, city, frame_id, size, rng)
    summary = FixtureSummary(root, counts, size, seed)
    marker = {"frames": counts, "size": list(size), "seed": seed}
    (root / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    return summary


Polygon = np.ndarray  # (N, 2) int32 (x, y) vertices
SceneObject = tuple[str, Polygon]  # (label name, polygon); later objects are drawn over earlier ones


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return _poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _poly(points: list[tuple[float, float]]) -> Polygon:
    return np.round(np.asarray(points, dtype=np.float64)).astype(np.int32)


@dataclass(frozen=True)
class _Street:
    """A frame's perspective: a road from a vanishing point on the horizon to the bottom row."""

    h: int
    w: int
    horizon: float  # y of the horizon
    vanishing_x: float
    half_width: float  # the road's half width at the bottom row

    def depth(self, y: float) -> float:
        """0 at the horizon, 1 at the bottom row: the scale of things standing at y."""
        return (y - self.horizon) / (self.h - self.horizon)

    def road_edge(self, y: float, side: int) -> float:
        """x of the road's left (side -1) or right (+1) edge at row y."""
        far = self.w * 0.03
        return self.vanishing_x + side * (far + self.depth(y) * (self.half_width - far))


def _street_scene(rng: np.random.Generator, h: int, w: int) -> list[SceneObject]:
    """A random street scene as labelled polygons, back to front."""
    street = _Street(h, w, h * rng.uniform(0.38, 0.52), w * rng.uniform(0.35, 0.65), w * rng.uniform(0.45, 0.8))
    return [
        *_skyline(rng, street),
        *_ground(rng, street),
        *_street_furniture(rng, street),
        *_road_users(rng, street),
        *_void_overlays(rng, street),
    ]


def _skyline(rng: np.random.Generator, street: _Street) -> list[SceneObject]:
    """Sky, a row of buildings (now and then a wall, or a gap near the vanishing point) and trees."""
    h, w, horizon = street.h, street.w, street.horizon
    objects: list[SceneObject] = [("sky", _rect(0, 0, w - 1, horizon))]
    x = 0.0
    while x < w:
        width = w * rng.uniform(0.08, 0.25)
        if abs(x + width / 2 - street.vanishing_x) > w * 0.1 or rng.random() < 0.5:
            label = "wall" if rng.random() < 0.15 else "building"
            top = h * 0.03 if label == "building" else horizon - h * 0.14
            objects.append((label, _rect(x, rng.uniform(top, horizon - h * 0.08), x + width, horizon)))
        x += width
    for _ in range(rng.integers(1, 4)):
        cx, ry, rx = w * rng.uniform(0, 1), h * rng.uniform(0.08, 0.18), w * rng.uniform(0.04, 0.1)
        crown = cv2.ellipse2Poly((int(cx), int(horizon - ry * 0.6)), (int(rx), int(ry)), 0, 0, 360, 30)
        objects.append(("vegetation", crown.astype(np.int32)))
    return objects


def _ground(rng: np.random.Generator, street: _Street) -> list[SceneObject]:
    """Sidewalk, terrain, ground and parking patches, the road, a fence, static and dynamic clutter."""
    h, w, horizon, edge = street.h, street.w, street.horizon, street.road_edge
    objects: list[SceneObject] = [("sidewalk", _rect(0, horizon, w - 1, h - 1))]
    side = rng.choice([-1, 1])
    if rng.random() < 0.7:
        x = 0 if side < 0 else w - 1
        bottom = horizon + (h - horizon) * rng.uniform(0.2, 0.5)
        objects.append(("terrain", _poly([(x, horizon), (edge(horizon, side), horizon), (x, bottom)])))
    for label in ("ground", "parking"):
        if rng.random() < 0.5:
            y, x0 = rng.uniform(horizon + 0.3 * (h - horizon), h * 0.95), w * rng.choice([0, 0.85])
            objects.append((label, _rect(x0, y, x0 + w * 0.15, y + h * 0.05)))
    objects.append(("road", _poly([(edge(y, side), y) for y, side in
                                   ((horizon, -1), (horizon, 1), (h - 1, 1), (h - 1, -1))])))
    if rng.random() < 0.6:
        x0 = 0 if side > 0 else w * 0.8
        objects.append(("fence", _rect(x0, horizon - h * 0.07, x0 + w * 0.2, horizon + h * 0.02)))
    for label in ("static", "dynamic"):
        if rng.random() < 0.6:
            y, x0 = rng.uniform(horizon + 4, h * 0.9), w * rng.choice([0.02, 0.9])
            objects.append((label, _rect(x0, y - h * 0.06 * street.depth(y) - 2, x0 + w * 0.05, y)))
    return objects


def _street_furniture(rng: np.random.Generator, street: _Street) -> list[SceneObject]:
    """Poles at the kerb, each carrying a traffic sign or a traffic light."""
    h, w = street.h, street.w
    objects: list[SceneObject] = []
    for _ in range(rng.integers(1, 4)):
        y, side = rng.uniform(street.horizon + 3, h * 0.85), rng.choice([-1, 1])
        x = float(np.clip(street.road_edge(y, side) + side * w * 0.02, 2, w - 3))
        tall, half = h * (0.15 + 0.35 * street.depth(y)), max(1.0, w * 0.006 * (1 + street.depth(y)))
        top, box = y - tall, max(3.0, 0.15 * tall)
        objects.append(("pole", _rect(x - half, top, x + half, y)))
        if rng.random() < 0.5:
            objects.append(("traffic sign", _poly([(x - box, top), (x + box, top), (x, top + 1.6 * box)])))
        else:
            objects.append(("traffic light", _rect(x - box / 2, top, x + box / 2, top + 2 * box)))
    return objects


def _road_users(rng: np.random.Generator, street: _Street) -> list[SceneObject]:
    """Vehicles on the road, people and cyclists beside it; nearer ones are drawn later."""
    h, w, horizon = street.h, street.w, street.horizon
    users: list[tuple[float, list[SceneObject]]] = []
    for _ in range(rng.integers(1, 4)):
        y = rng.uniform(horizon + 0.2 * (h - horizon), h * 0.9)
        label = rng.choice(["car", "car", "car", "truck", "bus"])
        width = max(6.0, w * 0.3 * street.depth(y))
        height = width * (0.55 if label == "car" else 0.9)
        cx = rng.uniform(street.road_edge(y, -1) + width / 2, street.road_edge(y, 1) - width / 2)
        x0, x1 = cx - width / 2, cx + width / 2
        if label == "car":
            body = _poly([(x0, y), (x1, y), (x1, y - 0.55 * height), (x1 - 0.2 * width, y - height),
                          (x0 + 0.2 * width, y - height), (x0, y - 0.55 * height)])
            plate = _rect(cx - width * 0.1, y - height * 0.2, cx + width * 0.1, y - height * 0.08)
            users.append((y, [(label, body), ("license plate", plate)]))
        else:
            users.append((y, [(label, _rect(x0, y - height, x1, y))]))
    for _ in range(rng.integers(0, 4)):
        y, side = rng.uniform(horizon + 0.1 * (h - horizon), h * 0.9), rng.choice([-1, 1])
        tall = max(8.0, h * 0.45 * street.depth(y))
        if rng.random() < 0.3:  # a cyclist at the road's edge: a bicycle with a rider above it
            x = float(np.clip(street.road_edge(y, side) - side * tall * 0.5, 2, w - 3))
            bike = _rect(x - tall * 0.35, y - tall * 0.4, x + tall * 0.35, y)
            users.append((y, [("bicycle", bike), ("rider", _person(x, y - tall * 0.3, tall * 0.75))]))
        else:
            x = float(np.clip(street.road_edge(y, side) + side * rng.uniform(0.02, 0.15) * w, 2, w - 3))
            users.append((y, [("person", _person(x, y, tall))]))
    users.sort(key=lambda user: user[0])
    return [obj for _, group in users for obj in group]


def _void_overlays(rng: np.random.Generator, street: _Street) -> list[SceneObject]:
    """What Cityscapes masks out on top of everything: the ego vehicle, the rectification border, out of roi."""
    h, w = street.h, street.w
    objects = _placeholder_scene(h, w, hood=rng.uniform(0.05, 0.1) if rng.random() < 0.8 else 0.0)
    if rng.random() < 0.5:
        objects.append(("out of roi", _poly([(0, h - 1), (w * 0.08, h - 1), (0, h * 0.9)])))
    return objects


def _person(x: float, y: float, tall: float) -> Polygon:
    """A standing figure: body and a narrower head, feet at (x, y)."""
    b, s = tall * 0.15, tall * 0.08
    return _poly([(x - b, y), (x + b, y), (x + b, y - 0.8 * tall), (x + s, y - 0.8 * tall),
                  (x + s, y - tall), (x - s, y - tall), (x - s, y - 0.8 * tall), (x - b, y - 0.8 * tall)])


def _hood(h: int, w: int, height: float) -> Polygon:
    """The ego vehicle's bonnet: a parabola `height` pixels high at the bottom of the frame."""
    xs = np.linspace(0, w - 1, 9)
    ys = h - 1 - height * (1 - ((xs - w / 2) / (w / 2)) ** 2)
    return _poly([*zip(xs, ys, strict=True), (w - 1, h - 1), (0, h - 1)])


def _placeholder_scene(h: int, w: int, hood: float = 0.08) -> list[SceneObject]:
    """The ego vehicle's bonnet (`hood` of the height, if any) and the rectification border.

    Alone, these make the test split's labels: Cityscapes' published test maps hold only void classes.
    """
    border = max(1, w // 64)
    objects = [("ego vehicle", _hood(h, w, h * hood))] if hood else []
    return objects + [("rectification border", _rect(0, 0, border - 1, h - 1)),
                      ("rectification border", _rect(w - border, 0, w - 1, h - 1))]


def _inside(objects: list[SceneObject], h: int, w: int) -> list[SceneObject]:
    """The objects with every vertex moved inside the image, as Cityscapes' polygons are."""
    return [(name, np.clip(polygon, 0, [w - 1, h - 1]).astype(np.int32)) for name, polygon in objects]


def _label_ids(instance_ids: np.ndarray) -> np.ndarray:
    """labelIds (uint8) from instanceIds: values of 1000 and more are labelId * 1000 + instance."""
    return np.where(instance_ids >= 1000, instance_ids // 1000, instance_ids).astype(np.uint8)


def _rasterize(objects: list[SceneObject], h: int, w: int) -> np.ndarray:
    """instanceIds (uint16): labelId, or labelId * 1000 + k for the k-th object of an instance class."""
    canvas = np.zeros((h, w), dtype=np.int32)
    seen: dict[str, int] = {}
    for name, polygon in objects:
        label = LABELS_BY_NAME[name]
        if label.id < 0:  # license plates are annotated but never drawn, as in cityscapesscripts
            continue
        value = label.id
        if label.has_instances:
            value = label.id * 1000 + seen.get(name, 0)
            seen[name] = seen.get(name, 0) + 1
        cv2.fillPoly(canvas, [polygon.reshape(-1, 1, 2)], value)
    return canvas.astype(np.uint16)


def _appearance_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """APPEARANCE as 256-entry lookup tables by labelId: mean RGB, texture index, amplitude."""
    means, textures, amplitudes = np.full((256, 3), 128, np.float32), np.zeros(256, np.intp), np.zeros(256, np.float32)
    for name, (mean, texture, amplitude) in APPEARANCE.items():
        label_id = LABELS_BY_NAME[name].id
        means[label_id], textures[label_id], amplitudes[label_id] = mean, TEXTURES.index(texture), amplitude
    return means, textures, amplitudes


_MEAN_LUT, _TEXTURE_LUT, _AMPLITUDE_LUT = _appearance_tables()


def _texture_patterns(rng: np.random.Generator, h: int, w: int) -> dict[str, np.ndarray]:
    """The patterns a class may wear, float32 roughly within [-1, 1], broadcastable to (h, w)."""
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 2 * np.pi, size=2)
    coarse = rng.standard_normal((h // 8 + 2, w // 8 + 2), dtype=np.float32)
    blotch = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return {
        "flat": np.zeros((1, 1), np.float32),
        "grain": rng.standard_normal((h, w), dtype=np.float32) * 0.6,
        "blotch": blotch / max(float(np.abs(blotch).max()), 1e-6),
        "hstripes": np.sign(np.sin(2 * np.pi * y / 6 + phase[0])),
        "vstripes": np.sign(np.sin(2 * np.pi * x / 5 + phase[1])),
        "windows": 1 - 2 * ((x % 8 < 4) & (y % 10 < 5)).astype(np.float32),
        "vgradient": y / (h - 1) * 2 - 1,
    }


def _render_image(label_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint each pixel with its class's mean colour and texture, plus sensor noise; (H, W, 3) uint8 RGB."""
    h, w = label_ids.shape
    kinds = _TEXTURE_LUT[label_ids]
    texture = np.zeros((h, w), np.float32)
    patterns = _texture_patterns(rng, h, w)
    for index, name in enumerate(TEXTURES):
        mask = kinds == index
        texture[mask] = np.broadcast_to(patterns[name], (h, w))[mask]
    texture = _AMPLITUDE_LUT[label_ids] * texture + rng.standard_normal((h, w), dtype=np.float32) * 2.0
    image = (_MEAN_LUT.take(label_ids, axis=0) + texture[..., None]) * rng.uniform(0.92, 1.08)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _coarsen(instance_ids: np.ndarray) -> np.ndarray:
    """Coarse-annotation look: a band of unlabeled (0) pixels along every region boundary."""
    kernel = np.ones((5, 5), np.uint8)
    boundary = cv2.dilate(instance_ids, kernel) != cv2.erode(instance_ids, kernel)
    return np.where(boundary, 0, instance_ids).astype(np.uint16)


def _write_frame(root: Path, split: str, city: str, frame_id: str, size: tuple[int, int],
                 rng: np.random.Generator) -> None:
    """Write one frame's image, labelIds, instanceIds, colour map and polygons."""
    h, w = size
    scene = _inside(_street_scene(rng, h, w), h, w)
    instance_ids = _rasterize(scene, h, w)
    image = _render_image(_label_ids(instance_ids), rng)
    if not is_labeled(split):
        scene = _inside(_placeholder_scene(h, w), h, w)
        instance_ids = _rasterize(scene, h, w)
    gt = "gtCoarse" if split == "train_extra" else "gtFine"
    if gt == "gtCoarse":  # its polygons stay the fine ones; only the label maps are coarsened
        instance_ids = _coarsen(instance_ids)
    label_ids = _label_ids(instance_ids)

    image_dir, label_dir = root / "leftImg8bit" / split / city, root / gt / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    stem = str(label_dir / f"{frame_id}_{gt}_")
    color = cv2.cvtColor(labelid_to_color(label_ids), cv2.COLOR_RGB2BGRA)  # RGBA, opaque, like Cityscapes
    _imwrite(image_dir / f"{frame_id}_leftImg8bit.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    _imwrite(Path(stem + "labelIds.png"), label_ids)
    _imwrite(Path(stem + "instanceIds.png"), instance_ids)
    _imwrite(Path(stem + "color.png"), color)
    polygons = {
        "imgHeight": h,
        "imgWidth": w,
        "objects": [{"label": name, "polygon": polygon.tolist()} for name, polygon in scene],
    }
    # No indent: only the compact encoder is written in C, and parsers do not care.
    Path(stem + "polygons.json").write_text(json.dumps(polygons) + "\n")


def _imwrite(path: Path, image: np.ndarray) -> None:
    path.write_bytes(encode_png(image, path))
