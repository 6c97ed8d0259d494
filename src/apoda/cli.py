"""The `apoda` command line: demo, train, eval, predict, export, report, select, data, suite.

Errors for bad input are one line (`error: ...`); `--debug` shows the traceback.
Each command's arguments (`_add_NAME`) sit next to the handler that reads them (`cmd_NAME`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apoda import __version__
from apoda.errors import ApodaError

EXAMPLES = {
    "demo": "example: apoda demo --out runs/demo   (apoda demo --fast: a short smoke run)",
    "train": "example: apoda train minicity/apoda model.init_from=runs/so train.iterations=300 "
    "--out runs/apoda",
    "eval": "example: apoda eval runs/apoda --data cityscapes --root /data/cityscapes --split val",
    "predict": "example: apoda predict runs/apoda/checkpoints/last.pt frames/ --out predictions/",
    "export": "example: apoda export runs/apoda --format onnx --out apoda.onnx",
    "report": "example: apoda report runs/demo/source_only runs/demo/apoda --out runs/compare",
    "select": "example: apoda select runs/dacs runs/dacs-s1 --labels --out runs/selection.json",
    "data": "example: apoda data stats gta5 /data/gta5 --out gta5.json --plot gta5.png",
    "suite": "example: apoda suite table3 --seeds 3 --out runs/table3",
    "pretrain": "example: apoda pretrain minicity --iterations 600",
}


DEBUG_HELP = "show tracebacks on errors"
FORMATTER = argparse.RawDescriptionHelpFormatter

if TYPE_CHECKING:  # what add_subparsers returns: add_parser makes one subcommand
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


class _ScoredDatasets:
    """argparse choices: the datasets `apoda data stats` takes (apoda.registry.DATASETS), read
    when an argument is checked or help is shown, so building the parser imports no dataset."""

    def __contains__(self, name: object) -> bool:
        return name in list(self)

    def __iter__(self) -> Iterator[str]:
        from apoda.registry import dataset_names

        return iter(dataset_names("scored"))


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    """The `apoda` parser: global options, then one subcommand each (in `apoda --help` order)."""
    parser = argparse.ArgumentParser(
        prog="apoda",
        description="Unsupervised domain adaptation for semantic segmentation by adversarial "
        "perturbation (APODA, AAAI 2020), with its baselines, datasets and reports.",
        epilog="Start with `apoda demo`. Each command has --help with an example.",
        formatter_class=FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"apoda {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_demo,
        _add_train,
        _add_eval,
        _add_predict,
        _add_export,
        _add_report,
        _add_select,
        _add_data,
        _add_pretrain,
        _add_suite,
    ):
        add(sub)
    return parser


def _add_command(
    sub: _Subparsers, name: str, help_text: str, epilog: str = ""
) -> argparse.ArgumentParser:
    """A subcommand whose help text is also its description, its example the epilog's end."""
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"{epilog}{EXAMPLES[name]}",
        formatter_class=FORMATTER,
    )
    # SUPPRESS: a subcommand without --debug keeps `apoda --debug COMMAND`'s value
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return p


# -- commands -----------------------------------------------------------------------------------
def _add_demo(sub: _Subparsers) -> None:
    """`apoda demo`: MiniCity, source only, APODA and its attack-off control, DACS, one report."""
    p = _add_command(
        sub,
        "demo",
        "Generate MiniCity, train source only (step 1), then APODA, APODA with the attack off "
        "and DACS from that checkpoint; print the per-class table and write the report.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--fast", action="store_true", help="a much shorter schedule (smoke test, CI)")
    p.add_argument("--overwrite", action="store_true", help="retrain runs that already exist")
    p.add_argument(
        "--imagenet",
        action="store_true",
        help="the paper's regime: MiniCity at 128x256 with the ImageNet EfficientNet-Lite0 as G "
        "(configs minicity_imagenet/*; about 28 min and 1.8 GB on 2 CPU cores, not 10 min)",
    )
    p.add_argument(
        "--self-training",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the DACS row (self-training with cross-domain mixing) from the same step-1 "
        "checkpoint: on by default, off by default with --imagenet",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo into --out."""
    from apoda.demo import run_demo

    run_demo(
        Path(args.out),
        fast=args.fast,
        overwrite=args.overwrite,
        imagenet=args.imagenet,
        self_training=args.self_training,
    )
    return 0


def _add_train(sub: _Subparsers) -> None:
    """`apoda train CONFIG [key=value ...]`; the epilog lists the built-in configs."""
    from apoda.configs import builtin_configs

    p = _add_command(
        sub,
        "train",
        "Train one config: a YAML file or a built-in name such as minicity/apoda.",
        epilog=textwrap.fill(f"built-in configs: {', '.join(builtin_configs())}", 88) + "\n",
    )
    p.add_argument("config", help="YAML file, or a built-in config name (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.iterations=50")
    p.add_argument("--out", help="run folder (default runs/NAME)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run from its last checkpoint; the config and overrides must match "
        "the run's (train.iterations may grow: the run is extended)",
    )
    p.add_argument("--overwrite", action="store_true", help="start an existing run folder again")


def cmd_train(args: argparse.Namespace) -> int:
    """Train one config into its run folder and print the final per-class table."""
    from apoda.config import load_config
    from apoda.configs import resolve_config
    from apoda.engine.trainer import Trainer
    from apoda.pretrain import resolve_pretrained

    config = load_config(resolve_config(args.config), args.overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / config.name
    trainer = Trainer(
        config,
        run_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        pretrained_file=resolve_pretrained(config),
    )
    metrics = trainer.fit()
    _print_metrics(metrics)
    print(f"run folder: {run_dir}")
    return 0


def _print_metrics(metrics: dict[str, Any]) -> None:
    """The per-class IoU table of one evaluation, tail classes marked."""
    from apoda.evaluation import format_table

    print(format_table({"IoU %": metrics}, metrics["class_names"], metrics["tail_classes"]))


def _add_eval(sub: _Subparsers) -> None:
    """`apoda eval CHECKPOINT`: the dataset and split to score on, where to write."""
    p = _add_command(
        sub,
        "eval",
        "Score a checkpoint (or a run folder) on a labelled split: per-class table and "
        "metrics.json.",
    )
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument(
        "--data",
        metavar="DATASET",
        help="the dataset to score on: one `apoda data stats` takes, or one the run's "
        "`imports:` register (default: the run's target: data.target with data.target_root of "
        "its config); folder: a folder dataset (README, 'Your own data')",
    )
    p.add_argument("--root", help="dataset folder (not needed for minicity)")
    p.add_argument(
        "--split", default=None, help="split (default: val for cityscapes, minicity and folder)"
    )
    p.add_argument(
        "--out", help="where to write metrics.json (default: RUN/eval-DATA-SPLIT beside the run)"
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="images per forward pass (default: data.eval_batch_size of the run's config)",
    )
    p.add_argument("--colors", help="also write colour PNGs of the predictions to this folder")


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a checkpoint on a labelled split and print its per-class table."""
    from apoda.inference import evaluate_checkpoint

    metrics, out = evaluate_checkpoint(
        args.checkpoint, args.data, args.root, args.split, args.out, args.batch_size, args.colors
    )
    print(f"evaluated on {metrics['dataset']} {metrics['split']}")
    _print_metrics(metrics)
    print(f"wrote {out}")
    return 0


def _add_predict(sub: _Subparsers) -> None:
    """`apoda predict CHECKPOINT IMAGES --out DIR`."""
    p = _add_command(
        sub,
        "predict",
        "Write label maps for an image or a folder of images (walked recursively, subfolders "
        "kept): NAME_labelTrainIds.png (8-bit train ids), NAME_labels.png (colours) and "
        "NAME_overlay.png. NAME is the image's stem, or its file name when another image in "
        "the folder has the same stem (street.png, street.jpg). Earlier outputs are skipped; "
        "unreadable images are reported and skipped (exit status 1).",
    )
    p.add_argument(
        "checkpoint",
        help="checkpoint file or run folder, or a model written by `apoda export` (.onnx, or "
        ".pt/.ts TorchScript: run on the CPU, each image at its own size or resized to the run's "
        "data.target_size, as its checkpoint)",
    )
    p.add_argument("images", help="an image file or a folder of .png/.jpg/.jpeg images")
    p.add_argument("--out", required=True, help="output folder")


def cmd_predict(args: argparse.Namespace) -> int:
    """Write label maps for the images; exit status 1 when some could not be read."""
    from apoda.prediction import predict_images

    result = predict_images(args.checkpoint, args.images, args.out)
    if result.skipped:
        skipped = len(result.skipped)
        print(f"skipped {skipped} earlier prediction output{'' if skipped == 1 else 's'}")
    count = len(result.predicted)
    noun = "image" if count == 1 else "images"
    print(f"predicted {count} {noun} into {result.out} (label ids, colours, overlays)")
    if not result.failures:
        return 0
    for file, reason in result.failures:
        print(f"error: cannot read {file}: {reason} (skipped)", file=sys.stderr)
    failed = len(result.failures)
    noun = "image" if failed == 1 else "images"
    print(f"{failed} {noun} could not be read", file=sys.stderr)
    return 1


def _add_export(sub: _Subparsers) -> None:
    """`apoda export CHECKPOINT --format F --out FILE`."""
    p = _add_command(
        sub,
        "export",
        "Write a checkpoint's segmenter (upsampling to the input size included) as one ONNX or "
        "TorchScript file for deployment, with its normalisation, resizing and classes as "
        "metadata, and check the written file against PyTorch on a sample image (and at a "
        "second size): it must match PyTorch's logits within a float32 rounding tolerance "
        "(printed), or nothing is written.",
    )
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument(
        "--format",
        required=True,
        choices=["onnx", "torchscript"],
        help="onnx (needs pip install 'apoda[export]') or torchscript",
    )
    p.add_argument("--out", required=True, help="the file to write: .onnx, or .pt/.ts")
    p.add_argument(
        "--size",
        help="HEIGHTxWIDTH of the sample the written file is checked at; the file takes any "
        "size (default: the run's data.target_size, else the size of its target's validation "
        "images, else its MiniCity image size)",
    )


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint and print the file's interface and the checks it passed."""
    from apoda.export import RUNTIMES, export_checkpoint

    result = export_checkpoint(args.checkpoint, args.format, args.out, args.size)
    dynamic = {"height", "width"} <= set(result.dynamic_axes)
    height, width = ("height", "width") if dynamic else result.size
    print(
        f"exported to {result.out} ({result.format}): input image float32 [batch, 3, {height}, "
        f"{width}] normalised, output logits [batch, {result.num_classes}, {height}, {width}]; "
        f"dynamic axes: {', '.join(result.dynamic_axes)}"
    )
    if result.resize is None:
        print("apoda predict runs each image at its own size, as the checkpoint does")
    else:
        print(
            f"apoda predict resizes each image to {result.resize[0]}x{result.resize[1]} first, "
            "as the checkpoint does (the run's data.target_size)"
        )
    print(
        f"check on {result.sample} and its mirror: {RUNTIMES[result.format]} vs PyTorch logits, "
        f"max |difference| {result.max_difference:.3g} (max |logit| {result.max_logit:.3g})"
    )
    tolerance = result.tolerance
    print(
        f"tolerance {tolerance.formula()} (N roundings on a path, u float32's unit roundoff, "
        "T the largest sum of |terms| of a logit): passed"
    )
    print(f"argmax agreement: {100 * result.argmax_agreement:.2f} % of {result.pixels} pixels")
    other = result.other
    if other is not None:
        print(
            f"check at another size, {other.size[0]}x{other.size[1]}: max |difference| "
            f"{other.max_difference:.3g} within {other.tolerance.formula()}: passed; argmax "
            f"agreement {100 * other.argmax_agreement:.2f} % of {other.pixels} pixels"
        )
    return 0


def _add_report(sub: _Subparsers) -> None:
    """`apoda report RUN [RUN ...]`."""
    p = _add_command(
        sub, "report", "Draw the pictures and report.md for one or more runs side by side."
    )
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument(
        "--out",
        help="output folder (default: the single run's own folder, where its report.md is "
        "rewritten; several runs: ./report)",
    )


def cmd_report(args: argparse.Namespace) -> int:
    """Write report.md for the runs (a single run's own report keeps its title)."""
    from apoda.report import read_run, write_report
    from apoda.runs import REPORT_FILE, writable_folder

    runs = [read_run(path) for path in args.runs]
    out = Path(args.out) if args.out else (Path(args.runs[0]) if len(runs) == 1 else Path("report"))
    own_folder = len(runs) == 1 and out.resolve() == runs[0].path.resolve()
    replaced = own_folder and (out / REPORT_FILE).is_file()
    writable_folder(out)
    if own_folder:  # a run's own report keeps the title training gave it
        path = write_report(runs, out, title=f"apoda run {runs[0].config.get('name', out.name)}")
    else:
        path = write_report(runs, out)
    print(f"rewrote {path}, the run's own report" if replaced else f"wrote {path}")
    return 0


def _add_select(sub: _Subparsers) -> None:
    """`apoda select RUN [RUN ...]`: label-free scores of every kept checkpoint."""
    p = _add_command(
        sub,
        "select",
        "Choose a checkpoint without target labels: score every checkpoint a run kept "
        "(train.keep_checkpoints=true; else its last.pt) with label-free scores (higher is "
        "better; docs/selection.md), print a table per run with the checkpoint each score "
        "chooses, and write every number as JSON.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folders")
    p.add_argument(
        "--scored",
        nargs="+",
        metavar="FILE",
        help="instead of run folders: the JSON files of earlier apoda select runs, pooled and "
        "judged again without scoring (a study over runs scored in parts)",
    )
    p.add_argument(
        "--labels",
        action="store_true",
        help="also read the target's validation labels: each checkpoint's target mIoU, each "
        "score's Spearman correlation with it and each rule's regret (a study of the scores; "
        "a real target has no labels to choose with)",
    )
    p.add_argument(
        "--images",
        type=_positive_int,
        metavar="N",
        help="target training images the target scores read, the first N without augmentation "
        "(default 64)",
    )
    p.add_argument(
        "--heldout-root",
        metavar="DIR",
        help="labelled source images the runs never trained on, in their source's format, for "
        "heldout_source_miou (default for MiniCity: another draw, seed + 1000, 200 images; "
        "other sources are skipped without it)",
    )
    p.add_argument(
        "--score",
        metavar="NAME",
        help="the score whose choice is marked and chosen across runs (default: "
        "apoda.selection.DEFAULT_SCORE; an unknown name lists the scores)",
    )
    p.add_argument(
        "--out",
        default="selection.json",
        metavar="FILE",
        help="the JSON to write (default ./selection.json: the runs are only read, as they may "
        "be in use by training or belong to others, and several runs have no one folder)",
    )


def cmd_select(args: argparse.Namespace) -> int:
    """Score the runs' checkpoints, print the tables and write the JSON."""
    from apoda import selection
    from apoda.runs import writable_folder

    score = selection.check_score(args.score or selection.DEFAULT_SCORE)
    out = Path(args.out)
    if out.is_dir():
        raise ApodaError(f"--out {out} is a folder; name the JSON file to write")
    writable_folder(out.parent)
    if bool(args.runs) == bool(args.scored):
        raise ApodaError("apoda select: name run folders or --scored FILE ..., one of the two")
    if args.scored:
        if args.images or args.heldout_root:
            raise ApodaError("--scored: --images and --heldout-root apply to scoring, not here")
        records, images = selection.read_scored(args.scored, args.labels)
        result = selection.summarise(records, score, args.labels, images)
    else:
        images = args.images or selection.DEFAULT_IMAGES
        result = selection.select(args.runs, images, args.heldout_root, args.labels, score)
    print(selection.format_selection(result))
    selection.write_selection(result, out)
    print(f"wrote {out}")
    return 0


def _add_data(sub: _Subparsers) -> None:
    """`apoda data TOOL`: the stats, check and minicity tools."""
    p = _add_command(
        sub,
        "data",
        "Dataset tools: class statistics (the paper's Fig. 4/5), the check of a folder dataset, "
        "and MiniCity.",
    )
    tools = p.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    _add_data_stats(tools)
    _add_data_check(tools)
    _add_data_minicity(tools)


def cmd_data(args: argparse.Namespace) -> int:
    """Run the data tool named on the command line."""
    if args.data_command == "minicity":
        return _data_minicity(args)
    if args.data_command == "check":
        return _data_check(args)
    return _data_stats(args)


def _add_data_stats(tools: _Subparsers) -> None:
    """`apoda data stats DATASET [ROOT]`: class pixel fractions (the paper's Fig. 4/5)."""
    s = tools.add_parser(
        "stats",
        help="class pixel fractions of a dataset",
        epilog=EXAMPLES["data"],
        formatter_class=FORMATTER,
    )
    s.add_argument("dataset", choices=_ScoredDatasets(), metavar="DATASET", help="%(choices)s")
    s.add_argument(
        "root",
        nargs="?",
        help="dataset folder (minicity: a folder written by `apoda data minicity --out`; "
        "default: the cache's MiniCity)",
    )
    s.add_argument(
        "--split",
        default=None,
        choices=["source", "train", "val", "test"],
        help="minicity: source (default), or the target's train or val; cityscapes: train, "
        "val (default) or test; gta5 and synthia: train (the whole folder, default)",
    )
    s.add_argument("--scheme", default=None, help="cityscapes19 (default) or synthia16")
    s.add_argument(
        "--cells",
        type=_positive_int,
        metavar="STRIDE",
        help="also measure, per class, the share of its pixels in STRIDE x STRIDE cells it owns "
        "(is the majority of): the feature cells a pointwise perturbation acts on at that "
        "output stride (8 for DeepLab-v2)",
    )
    s.add_argument(
        "--tail-from",
        help="a stats JSON of the source domain (written by --out): mark its tail classes, "
        "the ones evaluation uses, instead of this split's own (minicity target splits use "
        "MiniCity's source by default)",
    )
    s.add_argument("--out", help="write the statistics as JSON here")
    s.add_argument("--plot", help="draw the sorted log-scale class distribution here (PNG)")


def _data_stats(args: argparse.Namespace) -> int:
    """Print a dataset's class pixel fractions, sorted, tail classes marked."""
    from apoda.inference import dataset_stats

    stats = dataset_stats(
        args.dataset,
        args.root,
        args.split,
        args.scheme,
        args.out,
        args.plot,
        args.tail_from,
        args.cells,
    )
    width = max(len(n) for n in stats["class_names"])
    cells = stats.get("cell_share")
    if cells:
        print(f" {'class':<{width}}  {'pixels':>9}  in owned {args.cells}x{args.cells} cells")
    for name, frac in sorted(stats["pixel_fraction"].items(), key=lambda kv: -kv[1]):
        mark = "*" if name in stats["tail_classes"] else " "
        line = f"{mark}{name:<{width}}  {100 * frac:7.3f} %"
        if cells:
            share = cells.get(name)
            line += "  " + ("      -" if share is None else f"{100 * share:7.1f} %")
        print(line)
    whose = f"of {stats['tail_from']}'s" if stats.get("tail_from") else "of the"
    print(
        f"{stats['num_images']} images; ignored {100 * stats['ignored_fraction']:.2f} % of pixels; "
        f"* = tail (< 1 % {whose} labelled pixels)"
    )
    return 0


def _add_data_check(tools: _Subparsers) -> None:
    """`apoda data check ROOT`: read a folder dataset once and list every problem."""
    c = tools.add_parser(
        "check",
        help="read every file of a folder dataset once: counts, sizes, class fractions and "
        "every problem with its file (exit status 1 when there are problems)",
        description="Read every file of a folder dataset (ROOT/classes.yaml, ROOT/images/SPLIT/, "
        "ROOT/labels/SPLIT/) once and print one table of counts, image sizes and class "
        "fractions per split, then every problem with the file it is in: images without a "
        "label, labels without an image, label and image sizes that differ, values not in "
        "classes.yaml, unreadable or 16-bit files, labels that are not 8-bit PNGs of the kind "
        "classes.yaml names. Exit status 1 when there are problems.",
        epilog="example: apoda data check /data/my_source",
        formatter_class=FORMATTER,
    )
    c.add_argument("root", help="the folder dataset (a folder with images/, labels/, classes.yaml)")


def _data_check(args: argparse.Namespace) -> int:
    """Print the folder dataset's check; exit status 1 when it found problems."""
    from apoda.data.check import format_report, scan_folder

    report = scan_folder(args.root, progress=True)
    print(format_report(report))
    return 1 if report.all_problems else 0


def _add_data_minicity(tools: _Subparsers) -> None:
    """`apoda data minicity`: generate MiniCity, in its own layout or as folder datasets."""
    m = tools.add_parser(
        "minicity",
        help="generate the MiniCity benchmark",
        epilog="example: apoda data minicity --out /tmp/minicity   (plain folders of 7 "
        "categories: apoda data minicity --layout folder --out data/minicity-folders)",
        formatter_class=FORMATTER,
    )
    m.add_argument(
        "--layout",
        choices=["minicity", "folder"],
        default="minicity",
        help="minicity (default): GTA5 and Cityscapes layouts, 19 classes; folder: OUT/source "
        "and OUT/target as folder datasets of the 7 Cityscapes categories (needs --out)",
    )
    m.add_argument("--out", help="folder (default: the cache, $APODA_CACHE or ~/.cache/apoda)")
    m.add_argument("--seed", type=int, default=0, help="random seed of the scenes (default 0)")
    m.add_argument(
        "--height", type=_positive_int, default=64, help="image height in pixels (default 64)"
    )
    m.add_argument(
        "--width", type=_positive_int, default=128, help="image width in pixels (default 128)"
    )


def _data_minicity(args: argparse.Namespace) -> int:
    """Generate MiniCity (or reuse the cached one) and print where it is."""
    from apoda.data.minicity import MiniCityConfig, ensure_minicity

    cfg = MiniCityConfig(seed=args.seed, height=args.height, width=args.width)
    if args.layout == "minicity":
        root = ensure_minicity(cfg, root=Path(args.out) if args.out else None)
        print(f"MiniCity at {root}")
        return 0
    from apoda.data.minicity.folder_export import write_minicity_folder

    if not args.out:
        raise ApodaError("--layout folder needs --out DIR: where to write the folder datasets")
    source, target = write_minicity_folder(ensure_minicity(cfg), Path(args.out))
    print(f"MiniCity as folder datasets of 7 categories: source {source}, target {target}")
    return 0


def _add_pretrain(sub: _Subparsers) -> None:
    """`apoda pretrain minicity [key=value ...]`."""
    p = _add_command(
        sub,
        "pretrain",
        "Pretrain the small backbone on MiniCity's domain-randomised split and "
        "cache it (model.pretrained: builtin:minicity-randomised loads it).",
    )
    p.add_argument("benchmark", choices=["minicity"])
    p.add_argument(
        "--iterations", type=int, default=None, help="default: configs/minicity/pretrain"
    )
    p.add_argument(
        "overrides", nargs="*", help="key.sub=value overrides (e.g. data.minicity.seed=1)"
    )


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain and cache MiniCity's backbone; print the file."""
    from apoda.config import load_config
    from apoda.configs import resolve_config
    from apoda.pretrain import pretrain_minicity

    config = load_config(resolve_config("minicity/source_only"), args.overrides)
    print(f"pretrained backbone: {pretrain_minicity(config, args.iterations)}")
    return 0


def _add_suite(sub: _Subparsers) -> None:
    """`apoda suite NAME[,NAME]`: seeds, data family, rows, parallel jobs and overrides."""
    from apoda.configs import SUITE_FAMILIES

    p = _add_command(
        sub, "suite", "Run one of the paper's tables on MiniCity or real data, with seeds."
    )
    p.add_argument(
        "name",
        help="table1, table3, table4, table5, or selftraining (DACS and rare-class sampling beside "
        "the baselines); several comma-separated (table1,table3) write each table to OUT/NAME "
        "and share their common rows",
    )
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="train every row with seeds 0 .. N-1; the table shows mean ± std (default 1)",
    )
    p.add_argument(
        "--data",
        default="minicity",
        choices=list(SUITE_FAMILIES),
        help="minicity (default); minicity_imagenet: MiniCity at 128x256 with the ImageNet "
        "EfficientNet-Lite0 (the paper's regime, slower); minicity_128x256: the same size with "
        "the small net from scratch; gta5 / synthia to Cityscapes; or "
        "folder datasets (set the roots as overrides: data.source_root=DIR data.target_root=DIR)",
    )
    p.add_argument("--out", help="output folder (default runs/suite-NAME)")
    p.add_argument("--fast", action="store_true", help="a much shorter schedule (smoke test)")
    p.add_argument(
        "--runs",
        help="where the rows' runs live (default --out); suites sharing it share their common rows",
    )
    p.add_argument(
        "--only-seed",
        type=int,
        default=None,
        help="train only this seed's rows, write no table (parallel launches)",
    )
    p.add_argument(
        "--rows",
        help="comma-separated row keys: run only these rows (and the rows they start from), "
        "e.g. --rows asn,apoda",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="train up to N runs at once in child processes (every seed; a row starts when its "
        "init row has finished; logs in RUNS/logs), then write the tables (default 1)",
    )
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every row")


def cmd_suite(args: argparse.Namespace) -> int:
    """Train the suites' rows (in child processes with --jobs N), then write their tables."""
    from apoda.run_lock import FolderLock
    from apoda.suite_pool import train_in_parallel
    from apoda.suites import run_suite

    names = [n for n in args.name.split(",") if n]
    row_keys = [k for k in (args.rows or "").split(",") if k]
    if len(names) > 1 and row_keys:
        raise ApodaError("--rows picks rows of one suite; name a single suite with it")
    if args.jobs > 1 and args.only_seed is not None:
        raise ApodaError(
            "--jobs trains every seed itself; --only-seed is for launching seeds yourself"
        )
    out = Path(args.out) if args.out else Path("runs") / f"suite-{'-'.join(names)}"
    runs = Path(args.runs) if args.runs else out
    common = {
        "seeds": args.seeds,
        "data": args.data,
        "fast": args.fast,
        "overrides": args.overrides,
    }
    # the table's folder is held by one suite at a time (a child of --jobs writes no table:
    # it holds only its run's folder)
    lock = FolderLock(out) if args.only_seed is None else contextlib.nullcontext()
    with lock:
        if args.jobs > 1:
            train_in_parallel(names, runs, args.jobs, row_keys=row_keys, **common)
        for name in names:
            run_suite(
                name,
                out / name if len(names) > 1 else out,
                argv=sys.argv,
                runs=runs,
                only_seed=args.only_seed,
                row_keys=row_keys,
                **common,
            )
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "export": cmd_export,
    "report": cmd_report,
    "select": cmd_select,
    "data": cmd_data,
    "demo": cmd_demo,
    "suite": cmd_suite,
    "pretrain": cmd_pretrain,
}


def _show_warning(message: Warning | str, *_: object, **__: object) -> None:
    """Warnings as one line on stderr (`--debug` keeps Python's format, with the source)."""
    print(f"warning: {message}", file=sys.stderr)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; `key=value` overrides may come before or after the options
    (`apoda train CONFIG --out RUN train.iterations=2`), in the order given."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    takes_overrides = isinstance(getattr(args, "overrides", None), list)
    unknown = [item for item in extra if item.startswith("-") or not takes_overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `apoda` console script."""
    args = _parse(argv)
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = _show_warning
        try:
            return COMMANDS[args.command](args)
        except ApodaError as exc:
            if args.debug:
                raise
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:  # a training run says what it saved
            print(str(exc) or "interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
