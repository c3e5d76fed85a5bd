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

With `--recipe FILE ...` (configs/*.toml): what each recipe costs on Cityscapes (2975 train frames, 500
val) per variant: the model FLOPs of its schedule (every stage's images at its size, with the
recipe's output stride and auxiliary head; a stage in iterations is ITERS x BATCH images), plus the
validation after each epoch (500 frames, forward only, at the stage size), and the GPU-hours they take
at the assumed MFU. Evaluation at the end is left out (one pass over val).

    python benchmarks/training_flops.py --recipe configs/study.toml configs/strong.toml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hedprep.errors import OptionError  # noqa: E402
from hedprep.options import parse_size  # noqa: E402
from segnet.config import DEFAULT_EPOCHS_PER_STAGE, DEFAULT_SCHEDULE, Stage, TrainConfig, parse_schedule  # noqa: E402
from segnet.config_file import read_config_file  # noqa: E402
from segnet.deeplab import VARIANTS, TrainingNetwork, build_model  # noqa: E402
from segnet.losses import make_loss  # noqa: E402

H100_SXM_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's datasheet figure without sparsity
BATCH = 2
CITYSCAPES_TRAIN, CITYSCAPES_VAL = 2975, 500
STAGE_SIZES = [stage.size for stage in parse_schedule(DEFAULT_SCHEDULE)]

Size = tuple[int, int]


def step_flops(variant: str, size: Size, device: str, output_stride: int = 16,
               aux: bool = False) -> tuple[int, float, float]:
    """(input channels, forward FLOPs, forward + backward FLOPs) per image of one training step of
    `variant` at `size` (with the auxiliary head: its FLOPs too)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(variant, backbone_weights="none", output_stride=output_stride).train()
        network = TrainingNetwork(model).train() if aux else model
        images = torch.randn(BATCH, model.in_channels, *size)
        labels = torch.randint(0, 19, (BATCH, *size))
    loss = make_loss(TrainConfig(variant=variant, shards="", out="", aux_loss=0.4 if aux else 0.0))
    with FlopCounterMode(display=False) as counter:
        outputs = network(images)
        forward = counter.get_total_flops()
        loss(outputs, labels).backward()
    return model.in_channels, forward / BATCH, counter.get_total_flops() / BATCH


def recipe_stages(path: str) -> tuple[list[Stage], int, bool]:
    """A recipe file's stages, output stride and whether it trains an auxiliary head."""
    options = read_config_file(path)
    schedule = options.get("schedule", DEFAULT_SCHEDULE)
    schedule = ",".join(schedule) if isinstance(schedule, list) else schedule
    stages = parse_schedule(schedule, int(options.get("epochs-per-stage", DEFAULT_EPOCHS_PER_STAGE)))
    return stages, int(options.get("output-stride", 16)), float(options.get("aux-loss", 0)) > 0


def recipe_flops(variant: str, stages: list[Stage], output_stride: int, aux: bool,
                 device: str) -> tuple[float, float, int, int]:
    """(training FLOPs, validation FLOPs, training images, epochs) of a recipe on Cityscapes."""
    train = val = 0.0
    images = epochs = 0
    for stage in stages:
        _, _, step = step_flops(variant, stage.size, device, output_stride, aux)
        _, forward, _ = step_flops(variant, stage.size, device, output_stride)
        steps_per_epoch = -(-CITYSCAPES_TRAIN // stage.batch_size)
        stage_epochs = stage.epochs if stage.iters is None else -(-stage.iters // steps_per_epoch)
        stage_images = stage.iters * stage.batch_size if stage.iters is not None else stage.epochs * CITYSCAPES_TRAIN
        train += stage_images * step
        val += stage_epochs * CITYSCAPES_VAL * forward
        images, epochs = images + stage_images, epochs + stage_epochs
    return train, val, images, epochs


def print_recipes(paths: list[str], peak: float, mfu: float, device: str) -> None:
    print(f"\n### What a recipe costs on Cityscapes: model FLOPs and GPU-hours at {peak / 1e12:g} TFLOP/s "
          f"and {100 * mfu:g}% MFU\n")
    print("| recipe | variant | schedule | output stride | aux head | training images | epochs | "
          "training PFLOP | validation PFLOP | GPU-hours |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        stages, output_stride, aux = recipe_stages(path)
        for variant in VARIANTS:
            train, val, images, epochs = recipe_flops(variant, stages, output_stride, aux, device)
            hours = (train + val) / (peak * mfu) / 3600
            print(f"| {Path(path).name} | {variant} | {','.join(map(str, stages))} | {output_stride} | "
                  f"{'yes' if aux else 'no'} | {images} | {epochs} | {train / 1e15:.0f} | {val / 1e15:.0f} | "
                  f"{hours:.2f} |")


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
    parser.add_argument("--recipe", nargs="+", default=None, metavar="FILE",
                        help="recipe files (configs/*.toml): their FLOPs and GPU-hours on Cityscapes, and nothing else")
    args = parser.parse_args()
    peak = args.peak * 1e12
    if args.recipe:
        print_recipes(args.recipe, peak, args.mfu, args.device)
        return
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
