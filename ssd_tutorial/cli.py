"""The ``ssd-tutorial`` command line. Run ``ssd-tutorial --help`` for the commands.

* ``train``: train a model on synthetic shapes, a VOC year or a COCO-format folder.
* ``evaluate``: a checkpoint's VOC mAP and per-class AP on a dataset split.
* ``detect``: boxes for image files, drawn on the images and written to a JSON file.
* ``export``: a checkpoint's model as an ONNX file, to run with onnxruntime.
* ``anchors``: the default-box table of a configuration.

One function per command runs it (``_train_command``, ...), one adds its options
(``_train_options``, ...), and ``_COMMANDS`` lists them with their help. The module is longer
than the package's others because a command line is mostly option definitions and their help;
it imports the heavy modules inside each command, so that ``--help`` is fast and inference
never loads the trainer.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from ssd_tutorial import anchors

#: Default splits of each dataset kind: (train, evaluation).
DEFAULT_SPLITS = {
    "synthetic": ("train", "val"),
    "voc": ("trainval", "test"),
    "coco": ("train2017", "val2017"),
}


def _train_command(args: argparse.Namespace) -> int:
    """Train in this process, or in each process ``torchrun`` started (one per device)."""
    from ssd_tutorial import distributed

    with distributed.process_group(args.device) as device:
        return _train(args, device)


def _train(args: argparse.Namespace, device) -> int:
    import torch

    from ssd_tutorial import distributed
    from ssd_tutorial.data.loading import train_pipeline
    from ssd_tutorial.evaluate import evaluate_model
    from ssd_tutorial.model import build_ssd
    from ssd_tutorial.train import PRESETS, TrainConfig, Trainer

    # The small model trains from scratch: SGD at the paper's 1e-3 would need hours on a CPU.
    preset = args.preset or ("tiny_cpu" if args.model in ("ssd_tiny", "ssdlite_tiny") else None)
    settings = dict(PRESETS[preset]) if preset else {}
    given = {
        "epochs": args.epochs,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "milestones": tuple(args.milestones) if args.milestones else None,
        "max_steps": args.max_steps,
        "grad_clip": args.grad_clip,
        "seed": args.seed,
    }
    settings.update({k: v for k, v in given.items() if v is not None})
    config = TrainConfig(
        **settings,
        amp=None if args.amp == "none" else args.amp,
        compile=args.compile,
        sync_bn=args.sync_bn,
        log_every=args.log_every,
    )
    distributed.local_batch_size(args.batch_size, distributed.world_size())  # fail early
    torch.manual_seed(args.seed)
    size = _model_image_size(args.model)
    train_split, _ = _splits(args)
    pipeline = train_pipeline(size)  # all of SSD's augmentations
    train_data = _open(args, train_split, pipeline.transforms, args.train_size, size)
    class_names = train_data.class_names
    model = build_ssd(args.model, len(class_names), pretrained_base=args.pretrained_base)
    model.channels_last = args.channels_last
    trainer = Trainer(
        model,
        config,
        device=device,
        out_dir=args.out,
        progress=not args.quiet,
        class_names=class_names,
    )
    is_main = distributed.is_main_process()  # only rank 0 prints, evaluates and writes
    if args.resume:
        trainer.load_checkpoint(args.resume)
        if is_main:
            print(f"resumed from {args.resume} at epoch {trainer.epoch}, step {trainer.step}")
    evaluate = None
    if not args.no_eval and is_main:
        val_loader = _eval_loader(args, size, trainer.device)
        evaluate = lambda m: evaluate_model(  # noqa: E731
            m, val_loader, class_names=class_names, progress=not args.quiet
        )
    train_loader = _loader(
        train_data, args, trainer.device, shuffle=True, shard=True, collate_fn=pipeline.collate_fn
    )
    history = trainer.fit(train_loader, evaluate)
    last = [row for row in history if "map" in row]
    if last:
        print(f"mAP@0.5 (VOC07 11-point) after epoch {last[-1]['epoch']}: {last[-1]['map']:.4f}")
    if is_main:
        print(f"checkpoint and logs in {args.out}")
    return 0


def _evaluate_command(args: argparse.Namespace) -> int:
    from ssd_tutorial.checkpoint import load_model
    from ssd_tutorial.evaluate import evaluate_model

    model, class_names = load_model(args.checkpoint, map_location=args.device or "cpu")
    classes = args.classes
    if args.data == "voc" and classes is None and class_names:
        classes = ",".join(class_names[1:])  # the classes the model was trained on
    device = next(model.parameters()).device
    loader = _eval_loader(args, model.config.image_size, device, classes)
    class_names = class_names or loader.dataset.class_names
    metrics = evaluate_model(model, loader, class_names=class_names, progress=not args.quiet)
    rows = [
        {"class": name.removeprefix("ap/"), "AP@0.5": value}
        for name, value in metrics.items()
        if name.startswith("ap/")
    ]
    rows += [
        {"class": "mAP (VOC07 11-point)", "AP@0.5": metrics["map"]},
        {"class": "mAP (area)", "AP@0.5": metrics["map_area"]},
    ]
    _print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"metrics written to {args.json}")
    return 0


def _detect_command(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    import torch

    from ssd_tutorial.data.files import read_image
    from ssd_tutorial.detector import Detector
    from ssd_tutorial.viz import draw_detections

    if args.onnx:  # raw or with post-processing: from_onnx reads which from the file
        detector = Detector.from_onnx(args.onnx, device=args.device, conf_threshold=args.threshold)
    else:
        model, class_names = _detection_model(args)
        detector = Detector(model, class_names, device=args.device, conf_threshold=args.threshold)
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"no image file at {', '.join(missing)}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {}
    for path in args.images:
        image = read_image(path).as_subclass(torch.Tensor)  # read once: to detect and to draw
        result = detector(image)
        report[str(path)] = {"image_size": list(result.image_size), "detections": result.to_dicts()}
        height, width = result.image_size
        figure, ax = plt.subplots(figsize=(width / 100, height / 100), dpi=100)
        draw_detections(ax, image, result)
        figure.subplots_adjust(0, 0, 1, 1)
        figure.savefig(args.out / f"{path.stem}.png")
        plt.close(figure)
        print(f"{path}: {len(result.scores)} detections -> {args.out / path.stem}.png")
    (args.out / "detections.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"boxes (pixels, x1 y1 x2 y2) in {args.out / 'detections.json'}")
    return 0


def _detection_model(args: argparse.Namespace):
    """The model and class names of ``--checkpoint`` or ``--torchvision-coco``."""
    if args.torchvision_coco:
        from torchvision.models.detection import SSD300_VGG16_Weights

        from ssd_tutorial.weights import load_torchvision_coco

        return load_torchvision_coco(), SSD300_VGG16_Weights.COCO_V1.meta["categories"]
    from ssd_tutorial.checkpoint import load_model

    model, class_names = load_model(args.checkpoint)
    # a checkpoint of a run without class names: call the classes by their labels
    return model, class_names or [f"class {label}" for label in range(model.num_classes)]


def _export_command(args: argparse.Namespace) -> int:
    from ssd_tutorial.checkpoint import load_model
    from ssd_tutorial.export import DEFAULT_OPSET, Postprocessing, export_onnx

    model, class_names = load_model(args.checkpoint)
    output = args.output or args.checkpoint.with_suffix(".onnx")
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    export_onnx(
        model,
        output,
        class_names,
        opset=opset,
        allow_untrained=True,  # the weights come from a checkpoint, whatever their values
        postprocess=args.with_postprocess,
    )
    size, boxes, k = model.config.image_size, model.config.num_boxes, Postprocessing().top_k
    outputs = (
        f"boxes [B, {k}, 4], scores [B, {k}], labels [B, {k}], num_detections [B]"
        if args.with_postprocess
        else f"loc [B, {boxes}, 4], conf [B, {boxes}, {model.num_classes}]"
    )
    print(
        f"{args.checkpoint} -> {output} (opset {opset}): images [B, 3, {size}, {size}] -> {outputs}"
    )
    return 0


def _anchors_command(args: argparse.Namespace) -> int:
    config = anchors.CONFIGS[args.config]
    print(
        f"{config.name}: {config.image_size}x{config.image_size} input, "
        f"{config.num_boxes} default boxes"
    )
    _print_table(anchors.anchor_table(config))
    return 0


def _score(text: str) -> float:
    """``--threshold``: a class probability in ``[0, 1)``, checked before any model loads."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _print_table(rows: list[dict[str, object]]) -> None:
    headers = list(rows[0])
    cells = [[_format(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def _format(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _model_image_size(name: str) -> int:
    from ssd_tutorial.model import ARCHITECTURES

    return ARCHITECTURES[name].anchors.image_size


def _splits(args: argparse.Namespace) -> tuple[str, str]:
    train, evaluation = DEFAULT_SPLITS[args.data]
    return (
        getattr(args, "train_split", None) or train,
        getattr(args, "split", None) or evaluation,
    )


def _open(
    args: argparse.Namespace,
    split: str,
    transforms,
    length: int,
    size: int,
    classes: str | None = None,
):
    """A dataset split; synthetic images are drawn at the network's input size ``size``;
    ``classes`` in ``--classes`` form (default: ``--classes``)."""
    from ssd_tutorial.data.catalog import open_dataset

    return open_dataset(
        args.data,
        split,
        root=args.root,
        transforms=transforms,
        length=length,
        image_size=size,
        seed=args.seed,
        skip_invalid=args.skip_invalid,
        classes=_class_list(classes if classes is not None else args.classes),
    )


def _class_list(value: str | None) -> list[str] | None:
    """``--classes``: names separated by commas, or a text file with one name per line."""
    if value is None:
        return None
    path = Path(value)
    text = path.read_text() if path.is_file() else value.replace(",", "\n")
    names = [name.strip() for name in text.splitlines() if name.strip()]
    if not names:
        raise ValueError(f"--classes {value!r} names no class")
    if len(set(names)) != len(names):
        raise ValueError(f"--classes {value!r} names a class twice")
    return names


def _eval_loader(args: argparse.Namespace, size: int, device, classes: str | None = None):
    from ssd_tutorial.data.transforms import eval_transforms

    _, split = _splits(args)
    dataset = _open(args, split, eval_transforms(size), args.val_size, size, classes)
    return _loader(dataset, args, device)


def _loader(
    dataset,
    args: argparse.Namespace,
    device,
    shuffle: bool = False,
    shard: bool = False,
    collate_fn: Callable | None = None,
):
    """Batches of ``--batch-size`` images (:func:`~ssd_tutorial.data.loading.make_loader`, with
    the loading options given); with ``shard``, under several processes, this process's equal
    part of each global batch."""
    from ssd_tutorial.data.loading import make_loader

    return make_loader(
        dataset,
        args.batch_size,
        shuffle=shuffle,
        shard=shard,
        seed=args.seed,
        collate_fn=collate_fn,
        device=device,
        workers=args.workers,
        pin_memory=args.pin_memory,
        persistent_workers=args.persistent_workers,
    )


_CLASSES_HELP = (
    "VOC layout: the annotations' class names, comma-separated or a text file with one per "
    "line (default: Pascal VOC's 20"
)
_PERSISTENT_HELP = "keep the loading processes between epochs (default: on when --workers > 0)"
#: The help of the data options that differ between train (first) and evaluate (second).
_DATA_HELP: dict[str, tuple[str, str]] = {
    "--classes": (_CLASSES_HELP + ")", _CLASSES_HELP + ", or those the checkpoint was trained on)"),
    "--batch-size": (
        "images per batch (default: 32); under torchrun the global batch, split evenly over "
        "the processes: it must be divisible by their number. Changing it does not change "
        "--lr: scale the LR with the batch yourself (linear scaling rule: k times the batch, k "
        "times the LR, with --warmup-steps)",
        "images per batch (default: 32)",
    ),
    "--persistent-workers": (
        _PERSISTENT_HELP + "; their random augmentation then runs on from epoch to epoch, so a "
        "run resumed with --resume matches an uninterrupted one exactly only with "
        "--no-persistent-workers",
        _PERSISTENT_HELP,
    ),
}


def _add_data_arguments(p: argparse.ArgumentParser, train: bool) -> None:
    """The dataset and loader options of ``train`` (``train=True``) and ``evaluate``."""
    help_for = {option: texts[0 if train else 1] for option, texts in _DATA_HELP.items()}
    p.add_argument(
        "--data",
        choices=sorted(DEFAULT_SPLITS),
        default="synthetic",
        help="dataset kind (default: synthetic shapes, generated on the fly)",
    )
    p.add_argument(
        "--root",
        type=Path,
        help="dataset folder: a VOC year directory (VOCdevkit/VOC2007) or a COCO folder with "
        "SPLIT/ images and annotations/instances_SPLIT.json",
    )
    if train:
        p.add_argument(
            "--train-split", help="training split (default: train, trainval or train2017)"
        )
        p.add_argument("--train-size", type=int, default=4000, help="synthetic training images")
    p.add_argument(
        "--split" if not train else "--val-split",
        dest="split",
        help="evaluation split (default: val, test or val2017)",
    )
    p.add_argument("--val-size", type=int, default=500, help="synthetic evaluation images")
    p.add_argument("--classes", help=help_for["--classes"])
    p.add_argument("--skip-invalid", action="store_true", help="warn about and skip bad images")
    p.add_argument("--batch-size", type=int, default=32, help=help_for["--batch-size"])
    p.add_argument(
        "--workers",
        type=int,
        help="data loading processes per training process (default: the CPU cores shared "
        "out among the training processes, at most 8)",
    )
    p.add_argument(
        "--pin-memory",
        action=argparse.BooleanOptionalAction,
        help="page-locked batches for faster GPU copies (default: on for CUDA)",
    )
    p.add_argument(
        "--persistent-workers",
        action=argparse.BooleanOptionalAction,
        help=help_for["--persistent-workers"],
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order and augmentation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="ssd-tutorial", description="Train, evaluate and run SSD detectors."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in _COMMANDS.items():
        p = commands.add_parser(name, help=command.help, description=command.description)
        command.add_options(p)
        p.set_defaults(run=command.run)
    return parser


def _train_options(p: argparse.ArgumentParser) -> None:
    from ssd_tutorial.model import ARCHITECTURES
    from ssd_tutorial.train import PRESETS

    p.add_argument("--model", choices=sorted(ARCHITECTURES), default="ssd_tiny")
    _add_data_arguments(p, train=True)
    p.add_argument("--out", type=Path, default=Path("runs/ssd"), help="output directory")
    p.add_argument("--resume", type=Path, help="continue from this checkpoint (last.pt)")
    p.add_argument("--epochs", type=int, help="passes over the training data (default: 10)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a reference recipe (default: tiny_cpu for the 128 px models ssd_tiny and "
        "ssdlite_tiny, none for the others)",
    )
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help="default: sgd (or the preset's)")
    p.add_argument(
        "--lr",
        type=float,
        help="peak learning rate of the global batch (default: 1e-3 or the preset's, for "
        "their batch size; not rescaled for another batch size or number of GPUs)",
    )
    p.add_argument("--warmup-steps", type=int, help="linear warm-up steps")
    p.add_argument("--milestones", type=int, nargs="+", help="steps where the LR drops 10x")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    p.add_argument(
        "--amp",
        choices=("bf16", "fp16", "none"),
        default="bf16",
        help="mixed precision: bf16 or fp16 on CUDA, bf16 on a CPU with bfloat16 arithmetic",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels-last (NHWC) input to the convolutions, faster on CPUs and GPUs "
        "(default: on)",
    )
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun on GPUs, batch-norm statistics over the global batch "
        "(SyncBatchNorm) rather than each process's shard",
    )
    p.add_argument("--pretrained-base", action="store_true", help="ImageNet VGG-16 weights")
    p.add_argument("--log-every", type=int, default=10, help="steps between CSV rows")
    p.add_argument("--no-eval", action="store_true", help="no evaluation after each epoch")


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by train (last.pt)")
    _add_data_arguments(p, train=False)
    p.add_argument("--json", type=Path, help="also write the metrics to this JSON file")


def _detect_options(p: argparse.ArgumentParser) -> None:
    from ssd_tutorial.detector import DISPLAY_THRESHOLD

    p.add_argument("images", type=Path, nargs="+", help="image files (JPEG, PNG, ...)")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, help="a checkpoint written by train")
    weights.add_argument(
        "--onnx",
        type=Path,
        help="an ONNX file written by export, with or without post-processing (runs with "
        "onnxruntime)",
    )
    weights.add_argument(
        "--torchvision-coco",
        action="store_true",
        help="torchvision's COCO-trained SSD300 weights (downloads 136 MB)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/detect"), help="output directory")
    p.add_argument(
        "--threshold",
        type=_score,
        default=DISPLAY_THRESHOLD,
        help=f"minimum score to report (default: {DISPLAY_THRESHOLD})",
    )
    p.add_argument("--device", help="cpu, cuda, mps (default: where the model loads)")


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by train")
    p.add_argument(
        "--output", type=Path, help="the ONNX file (default: the checkpoint's path, .onnx)"
    )
    p.add_argument("--opset", type=int, help="ONNX operator set, 18 or later (default: 18)")
    p.add_argument(
        "--with-postprocess",
        action="store_true",
        help="end the graph in the detections, padded to top-k rows per image (decoding, "
        "threshold, NMS and top-k with the defaults of ssd_tutorial.postprocess.detect), "
        "instead of the network's loc and conf",
    )


def _anchors_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        choices=sorted(anchors.CONFIGS),
        default="SSD300",
        help="named default-box configuration (default: SSD300)",
    )


class _Command(NamedTuple):
    """A sub-command: what runs it, what adds its options, and its help texts."""

    run: Callable[[argparse.Namespace], int]
    add_options: Callable[[argparse.ArgumentParser], None]
    help: str
    description: str | None = None


#: The sub-commands, in the order of ``--help``.
_COMMANDS: dict[str, _Command] = {
    "train": _Command(
        _train_command,
        _train_options,
        help="train an SSD",
        description="Train an SSD; writes train.csv, eval.csv and last.pt to --out. On several "
        "GPUs, launch it with PyTorch's torchrun: torchrun --nproc_per_node=8 -m "
        "ssd_tutorial.cli train ... (one process per GPU, NCCL; with --device cpu, CPU "
        "processes and Gloo). --batch-size is then the global batch; rank 0 logs, evaluates "
        "and writes the checkpoints.",
    ),
    "evaluate": _Command(
        _evaluate_command,
        _evaluate_options,
        help="VOC mAP of a checkpoint on a dataset split",
    ),
    "detect": _Command(
        _detect_command,
        _detect_options,
        help="detect objects in image files",
        description="Draw the detections on each image (OUT/NAME.png) and write every box, in "
        "pixels of the original image, to OUT/detections.json.",
    ),
    "export": _Command(
        _export_command,
        _export_options,
        help="write a checkpoint's model to an ONNX file",
        description="Write the network of a checkpoint to ONNX (dynamic batch axis; "
        "post-processing left out unless --with-postprocess) with its class names, input size, "
        "normalisation and default boxes in the file's metadata; run it with `detect --onnx`.",
    ),
    "anchors": _Command(
        _anchors_command,
        _anchors_options,
        help="print the default-box table of a config",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssd-tutorial`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from ssd_tutorial.weights import WeightsUnavailableError

    try:
        return args.run(args)
    except (FileNotFoundError, ValueError, FloatingPointError, WeightsUnavailableError) as error:
        parser.exit(1, f"ssd-tutorial {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
