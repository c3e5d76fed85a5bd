"""FLOPs of one training step per image, for each variant and stage size, and what they ask of the loader
on a GPU: images/s per H100 and the loader cores one GPU needs.

    python benchmarks/training_flops.py                                  # a few seconds (meta tensors)
    python benchmarks/training_flops.py --before 128x224=31.5,256x448=30.9,512x912=25.9 \\
        --after 128x224=1087,256x448=296,512x912=57.5

Counted with `torch.utils.flop_counter.FlopCounterMode` over forward + backward of a batch of 2 in
train mode (loss: cross-entropy of the logits; `segnet.deeplab.build_model(variant,
backbone_weights="none")`), divided by 2. The counter counts matrix products and convolutions (a
multiply-add is 2 FLOPs), not batch norm, activations, pooling, interpolation, the loss or the
optimiser step: model FLOPs, as MFU figures use them. By default the step runs on meta tensors
(shapes only, no arithmetic; the counts equal a CPU run's: `--device cpu` checks).

On paper, an NVIDIA H100 SXM: bf16 dense peak 989 TFLOP/s; images/s = peak x MFU / FLOPs per image,
at an assumed model FLOP utilisation of 40% (`--mfu`), and the 100% bound. With `--before` and
`--after` (samples/s per loader core, e.g. from benchmarks/segnet_loader.py: today's path and the
level path), the cores one GPU needs at each stage = GPU images/s / samples/s per core.
Prints Markdown tables (docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hedprep.errors import OptionError  # noqa: E402
from hedprep.options import parse_size  # noqa: E402
from segnet.config import DEFAULT_SCHEDULE, parse_schedule  # noqa: E402
from segnet.deeplab import VARIANTS, build_model  # noqa: E402

H100_SXM_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's datasheet figure without sparsity
BATCH = 2
STAGE_SIZES = [stage.size for stage in parse_schedule(DEFAULT_SCHEDULE)]

Size = tuple[int, int]


def step_flops(variant: str, size: Size, device: str) -> tuple[int, float, float]:
    """(input channels, forward FLOPs, forward + backward FLOPs) per image of one training step of
    `variant` at `size`."""
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(variant, backbone_weights="none").train()
        images = torch.randn(BATCH, model.in_channels, *size)
        labels = torch.randint(0, 19, (BATCH, *size))
    with FlopCounterMode(display=False) as counter:
        logits = model(images)
        forward = counter.get_total_flops()
        F.cross_entropy(logits, labels, ignore_index=255).backward()
    return model.in_channels, forward / BATCH, counter.get_total_flops() / BATCH


def parse_rates(text: str) -> dict[Size, float]:
    """'128x224=31.5,512x912=25.9' -> {(128, 224): 31.5, (512, 912): 25.9}."""
    rates = {}
    for entry in text.split(","):
        size, _, value = entry.partition("=")
        try:
            rates[parse_size(size.strip())] = float(value)
        except (OptionError, ValueError):
            raise argparse.ArgumentTypeError(f"'{entry}' is not HxW=SAMPLES_PER_S, e.g. 128x224=31.5") from None
    return rates


def size_name(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilisation (default 0.4)")
    parser.add_argument("--peak", type=float, default=H100_SXM_BF16_DENSE / 1e12,
                        help="GPU peak TFLOP/s (default 989: H100 SXM, bf16 dense)")
    parser.add_argument("--before", type=parse_rates, default=None,
                        help="samples/s per loader core before (today's path), HxW=RATE,...")
    parser.add_argument("--after", type=parse_rates, default=None,
                        help="samples/s per loader core after (the level path), HxW=RATE,...")
    parser.add_argument("--device", choices=("meta", "cpu"), default="meta",
                        help="where the counted step runs: meta (shapes only, default) or cpu (real arithmetic)")
    args = parser.parse_args()
    peak = args.peak * 1e12
    flops = {(v, s): step_flops(v, s, args.device) for v in VARIANTS for s in STAGE_SIZES}

    print(f"\n### Model FLOPs per image of one training step (forward + backward, batch {BATCH}), GFLOP\n")
    print("| variant | in channels | " + " | ".join(f"{size_name(s)} fwd+bwd (fwd)" for s in STAGE_SIZES) + " |")
    print("|---|---|" + "---|" * len(STAGE_SIZES))
    for v in VARIANTS:
        print(f"| {v} | {flops[v, STAGE_SIZES[0]][0]} | " + " | ".join(
            f"{flops[v, s][2] / 1e9:.1f} ({flops[v, s][1] / 1e9:.1f})" for s in STAGE_SIZES) + " |")

    gpu = {key: peak * args.mfu / f[2] for key, f in flops.items()}
    print(f"\n### Images/s per GPU on paper: {args.peak:g} TFLOP/s at {100 * args.mfu:g}% MFU (100% bound)\n")
    print("| variant | " + " | ".join(size_name(s) for s in STAGE_SIZES) + " |")
    print("|---|" + "---|" * len(STAGE_SIZES))
    for v in VARIANTS:
        print(f"| {v} | " + " | ".join(f"{gpu[v, s]:.0f} ({peak / flops[v, s][2]:.0f})" for s in STAGE_SIZES) + " |")

    if args.before is None and args.after is None:
        return
    paths = [(name, rates) for name, rates in (("before", args.before), ("after", args.after)) if rates]
    sizes = [s for s in STAGE_SIZES if all(s in rates for _, rates in paths)]
    print(f"\n### Loader cores one GPU needs at {100 * args.mfu:g}% MFU = GPU images/s / samples/s per core\n")
    print("samples/s per core: " + "; ".join(
        f"{name} " + ", ".join(f"{size_name(s)} {rates[s]:g}" for s in sizes) for name, rates in paths) + "\n")
    print("| variant | " + " | ".join(f"{size_name(s)} {name}" for s in sizes for name, _ in paths) + " |")
    print("|---|" + "---|" * (len(sizes) * len(paths)))
    for v in VARIANTS:
        print(f"| {v} | " + " | ".join(f"{gpu[v, s] / rates[s]:.1f}" for s in sizes for _, rates in paths) + " |")


if __name__ == "__main__":
    main()
