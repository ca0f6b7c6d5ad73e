"""Command line: ``python -m cpcl_kit {train,evaluate,predict,ablate,demo,pretrain,prepare,doctor,data} ...``.

``data`` has its own commands: ``voc-aug`` (VOC 2012 + SBD masks and lists), ``cityscapes-trainids``
(labelIds -> labelTrainIds) and ``check`` (counts, classes, sizes and problems of a data tree).

Every user mistake ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from . import registry
from .constants import PREDICT_BRANCHES
from .errors import KitError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="smoke, demo, benchmark, voc, cityscapes (default: the dataset's own: "
                                    "voc for --dataset voc, cityscapes for --dataset cityscapes, else smoke)")
    p.add_argument("--dataset", help=f"{', '.join(registry.dataset_names())} (default: the preset's)")
    p.add_argument("--data-root", help="folder of a real data set (VOC, Cityscapes, or a folder of your "
                                       "own: images/, masks/, classes.txt)")
    p.add_argument("--labeled", help="labeled part: a fraction 1/N or a count")
    p.add_argument("--labeled-list", help="split file of labeled ids (CPS format)")
    p.add_argument("--unlabeled-list", help="split file of unlabeled ids (CPS format)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set lr=0.01 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _config(args, **extra):
    from .config import make_config
    from .typed import parse_sets

    over = parse_sets(args.sets)
    for key in ("dataset", "data_root", "labeled", "labeled_list", "unlabeled_list", "seed"):
        value = getattr(args, key, None)
        if value is not None:
            over[key] = value
    over.update({k: v for k, v in extra.items() if v is not None})
    return make_config(args.preset or default_preset(over.get("dataset")), over)


def default_preset(dataset: str | None) -> str:
    """The preset for ``dataset`` (from --dataset or --set dataset=...) when --preset is not given: the
    data set's own (``registry.DatasetEntry.preset``: the paper recipe of a paper data set, else the
    quick smoke run); an unknown dataset gets smoke here and is refused, by name, when the config is
    checked."""
    try:
        return registry.dataset(dataset).preset if dataset else "smoke"
    except KitError:
        return "smoke"


def _print_metrics(m: dict) -> None:
    line = f"mIoU {100 * m['miou']:.2f}"
    if "digit_miou" in m:
        line += f"  digit-only mIoU {100 * m['digit_miou']:.2f}"
    print(line + f"  pixel acc {100 * m['pixel_acc']:.2f}")
    names = m.get("class_names") or [str(i) for i in range(len(m["per_class_iou"]))]
    print("  ".join(f"{n}: {'-' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{100 * v:.1f}'}"
                    for n, v in zip(names, m["per_class_iou"])))


def cmd_train(args) -> None:
    cfg = _config(args, method=args.method)  # settings first: a typo fails before torch loads
    from .engine.train import train

    res = train(cfg, out_dir=args.out, resume=args.resume, progress=not args.quiet, fresh=args.fresh)
    if res.metrics and res.out_dir is not None:  # rank 0 of a multi-process run, or a single process
        _print_metrics(res.metrics)
        print(f"results in {args.out}")


def cmd_evaluate(args) -> None:
    from .config import make_config
    from .typed import parse_sets
    from .data.build import build_data
    from .engine.checkpoint import load_nets
    from .engine.device import pick_device
    from .engine.evaluate import evaluate_run
    from .files import write_json

    over = parse_sets(args.sets)
    fixed = [k for k in over if k not in EVALUATE_SETTINGS]
    if fixed:  # before torch loads: the checkpoint's weights were trained for its own settings
        raise KitError(f"--set {fixed[0]}: evaluate keeps the run's own dataset, model and training settings "
                       f"(its checkpoint holds weights for them); expected one of {', '.join(EVALUATE_SETTINGS)}")
    cfg, nets = load_nets(args.checkpoint)
    if args.data_root:
        over["data_root"] = args.data_root
    if over:  # e.g. a sliding-window crop or another branch for this evaluation
        saved = {k: v for k, v in cfg.to_dict().items() if k != "preset"}
        cfg = make_config(cfg.preset, {**saved, **over})
    device = pick_device(cfg.device)
    nets = [n.to(device) for n in nets]
    m = evaluate_run(cfg, nets, build_data(cfg), progress=not args.quiet)
    m.update(method=cfg.method, checkpoint=str(args.checkpoint))
    _print_metrics(m)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    write_json(out / "eval_metrics.json", m)  # a failed write is one KitError naming the file
    print(f"metrics written to {out / 'eval_metrics.json'}")


# What `evaluate --set` may change: how the checkpoint is scored and where the data is, never what
# the weights were trained as (dataset, classes, model, method).
EVALUATE_SETTINGS = ("eval_crop", "eval_stride", "eval_branch", "device", "amp", "channels_last",
                     "cudnn_benchmark", "num_workers", "data_root")


def cmd_predict(args) -> None:
    from .engine.predict import Predictor, checkpoint_path, image_files, output_names, write_predictions

    checkpoint_path(args.checkpoint)  # the cheap checks first: a typo fails before torch loads a net
    files = image_files(args.images)
    output_names(files)
    predictor = Predictor.load(args.checkpoint, branch=args.branch, device=args.device, crop=args.crop)
    labels = predictor(files, progress=not args.quiet)
    written = write_predictions(labels, files, args.out, palette=predictor.palette)
    window = f"{predictor.crop} px windows" if predictor.crop else "whole images"
    print(f"{len(written)} image(s), {args.branch} of {predictor.config.method} on {predictor.device}, {window}")
    print(f"class ids (<name>.png) and overlays (<name>_overlay.png) written to {Path(args.out)}")


def cmd_ablate(args) -> None:
    from .experiments.ablate import parse_grid, run_grid
    from .typed import parse_sets

    grid = parse_grid(args.grid)
    table = run_grid(grid, args.out, preset=args.preset, overrides=parse_sets(args.sets),
                     progress=not args.quiet, jobs=args.jobs, threads=args.threads)
    print(table.to_string(index=False))
    print(f"table written to {Path(args.out) / 'ablation.csv'}")


def cmd_demo(args) -> None:
    from .config import make_config
    from .teach.runner import run_demo

    make_config(args.preset)  # an unknown preset fails here, in one line, not inside every notebook

    run_demo(Path(args.out), preset=args.preset, only=args.only, jobs=args.jobs)


def cmd_pretrain(args) -> None:
    from .config import make_config
    from .typed import parse_sets

    cfg = make_config(args.preset, parse_sets(args.sets))  # settings first: a typo fails before torch
    from .nets import pretrain

    spec = pretrain.spec_for(cfg)
    spec.check()
    shipped = pretrain.shipped_path(spec)
    # the cache only where it is used: shipped weights need no cache (nor a home folder for it)
    ready = shipped is not None or pretrain.intact(
        (Path(args.cache) if args.cache else pretrain.default_cache_dir()) / pretrain.weights_name(spec))
    weights = pretrain.weights_path(spec, args.cache, progress=not args.quiet, rebuild=args.rebuild)
    r = pretrain.read_report(weights)
    origin = "shipped with the kit" if weights == shipped else "cached" if ready and not args.rebuild else "trained now"
    print(f"{spec.backbone} pretrained on {spec.source} digits: {r['steps']} steps, {r['seconds']:.0f} s ({origin})")
    print(f"accuracy on held-out {spec.source} images: {100 * r['heldout_acc']:.1f} %")
    print(f"accuracy on the handwritten scene digits (train + val pools): {100 * r['scene_digit_acc']:.1f} %")
    print(f"weights: {weights} (sha256 {pretrain.sha256(weights)})")
    if args.rebuild and shipped is not None:
        same = pretrain.sha256(weights) == pretrain.sha256(shipped)
        print(f"the shipped file {shipped.name} has sha256 {pretrain.sha256(shipped)}: "
              + ("this machine rebuilt it bit for bit" if same else
                 "this machine's float order gave other weights; runs use the shipped file unless "
                 f"--set backbone_weights={weights}"))
    else:
        print(f"use them with --set backbone_weights={pretrain.NAMED_WEIGHTS} (same preset and pretrain_* settings)")


def cmd_prepare(args) -> None:
    from .typed import parse_sets
    from .experiments import prepared
    from .files import probe_writable

    seeds = _seeds(args.seeds)
    folder = Path(args.out) if args.out else _default_prepared(prepared, args.preset)
    try:  # before any run: one line, not an OSError from deep inside the grid
        probe_writable(folder)
    except OSError as e:
        where = "--out" if args.out else "the prepared set's folder ($CPCL_KIT_PREPARED or the kit's cache)"
        raise KitError(f"{where}: cannot write to {folder} ({e.strerror or e}); expected a folder this user may "
                       f"write to" + ("" if args.out else " (or pass --out)")) from None
    print(f"prepared run set ({args.preset} preset, seeds {', '.join(map(str, seeds))}) in {folder}")
    table = prepared.prepare(folder, preset=args.preset, seeds=seeds, jobs=args.jobs,
                             overrides=parse_sets(args.sets), progress=not args.quiet)
    cols = ["variant", "labeled", "seed", "miou", "digit_miou", "miou_net2", "seconds"]
    print(table[cols].round(4).to_string(index=False))
    print(f"notebooks 04-08 now show these runs (folder {folder})")


def _default_prepared(prepared, preset: str) -> Path:
    try:
        return prepared.default_dir(preset)
    except RuntimeError as e:
        if no_home(e) is None:
            raise
        raise KitError("--out: no home folder for the prepared set's default folder (HOME is unset and this "
                       "user has none); pass --out <folder>, or set $CPCL_KIT_PREPARED or $CPCL_KIT_CACHE") from None


def cmd_doctor(args) -> None:
    cfg = _config(args, method=args.method)  # settings first: a typo fails before torch loads
    out = Path(args.out or f"doctor-{cfg.preset}.json")
    if not out.parent.is_dir():
        raise KitError(f"--out: folder {out.parent} does not exist")
    from .engine.doctor import diagnose, table
    from .files import write_json

    report = diagnose(cfg, steps=args.steps, warmup=args.warmup, search=not args.no_search,
                      progress=not args.quiet)
    print(table(report))
    try:
        write_json(out, report)
    except OSError as e:
        raise KitError(f"--out: cannot write {out} ({e.strerror or e})") from None
    print(f"report written to {out}")


def cmd_data(args) -> None:
    from .data import prepare

    progress = not args.quiet
    if args.data_command == "voc-aug":
        r = prepare.voc_aug(args.voc, args.sbd, args.out, progress=progress)
        print(f"{r.root}: {r.train_aug} train_aug ids (ImageSets/Segmentation/trainaug.txt), {r.val} val ids (val.txt)")
        print(f"SegmentationClassAug: {r.written} masks written, {r.kept} kept "
              f"({r.from_voc} from VOC SegmentationClass, {r.from_sbd} from SBD cls)")
        if r.standard:
            print(f"the counts match the full VOC 2012 + SBD sets ({prepare.VOC_AUG_TRAIN:,} / {prepare.VOC_VAL:,})")
        else:
            print(f"warning: {r.train_aug:,} / {r.val:,} train_aug / val images, the full VOC 2012 + SBD sets give "
                  f"{prepare.VOC_AUG_TRAIN:,} / {prepare.VOC_VAL:,} (expected for a subset only)", file=sys.stderr)
        print(f"use it with --dataset voc --data-root {r.root}")
    elif args.data_command == "cityscapes-trainids":
        r = prepare.cityscapes_train_ids(args.root, progress=progress)
        per_split = ", ".join(f"{n} {s}" for s, n in r.per_split.items())
        print(f"{r.root}: *_gtFine_labelTrainIds.png for {per_split}: {r.written} written, {r.kept} kept")
    else:
        report = prepare.check_data(args.root, dataset=args.dataset, progress=progress,
                                    labeled_list=args.labeled_list, unlabeled_list=args.unlabeled_list)
        print(prepare.check_report(report))
        n = len(report["problems"])
        if n:
            raise KitError(f"{report['root']}: {n} problem(s) in the {report['dataset']} data set (listed above); "
                           f"expected none before training")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise KitError(f"--seeds: expected integers separated by commas, got {text!r}") from None
    if not seeds:
        raise KitError("--seeds: expected at least one seed")
    return seeds


class _Parser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one line on stderr and exit 2, like every KitError."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _plugin_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="a Python file that registers data sets or methods of your own (docs/extending.md); "
                        "repeatable, before the command")


def build_parser() -> argparse.ArgumentParser:
    """The parser; its --method and --dataset choices are the registered ones, so plugins (--plugin)
    are loaded before it is built (``main``)."""
    parser = _Parser(prog="python -m cpcl_kit", description=__doc__.splitlines()[0])
    _plugin_option(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train supervised, CPS or CPCL and evaluate")
    # No argparse default: `--set method=...` (or the config's default, cpcl) applies unless given.
    p.add_argument("--method", choices=registry.method_names(), help="default: cpcl")
    _common(p)
    p.add_argument("--out", required=True, help="run folder (config, history, checkpoint, metrics)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--fresh", action="store_true",
                   help="start the run in --out over (its checkpoint, metrics and history are removed first); "
                        "without --resume or --fresh a folder that holds this run is refused")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the validation set")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root")
    p.add_argument("--out", help="folder for eval_metrics.json (default: the checkpoint's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict class maps of your own images with a trained run")
    p.add_argument("--checkpoint", required=True, help="a run's checkpoint.pt, or its run folder")
    p.add_argument("images", nargs="+", metavar="IMAGES",
                   help="image files and folders (their image files, any format PIL reads, sorted)")
    p.add_argument("--out", required=True,
                   help="folder for <name>.png (class ids, a palette PNG) and <name>_overlay.png")
    p.add_argument("--branch", choices=PREDICT_BRANCHES, default="net1",
                   help="net1 (default, as evaluated), net2, or ensemble (mean softmax of both)")
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda, cuda:N")
    p.add_argument("--crop", type=int, help="sliding-window side in px for images larger than it (default: the "
                                           "run's eval_crop; none there: whole images)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ablate", help="run an ablation grid (resumable) and collect one table")
    p.add_argument("--grid", nargs="+", required=True,
                   help="variants=cpcl,inter_only,... fractions=1/16,1/8 seeds=0,1")
    p.add_argument("--preset", default="smoke")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, in worker processes")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: cores // jobs)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("demo", help="run the tutorial notebooks headlessly into an output folder")
    p.add_argument("--out", default="out")
    p.add_argument("--preset", default="demo")
    p.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 01 06")
    p.add_argument("--jobs", type=int, default=1,
                   help="notebooks run at once, one torch thread each (make demo: 2)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain", help="pretrain the backbone for backbone_weights=digits (cached)")
    p.add_argument("--preset", default="demo", help="smoke, demo, benchmark (its pretrain_* settings)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. --set pretrain_source=printed --set pretrain_steps=200 (repeatable)")
    p.add_argument("--cache", help="folder of the cached weights (default: pretrain/ in $CPCL_KIT_CACHE, "
                                   "else ~/.cache/cpcl-kit)")
    p.add_argument("--rebuild", action="store_true",
                   help="train the weights again here, also where the kit ships them, and compare sha256")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("prepare", help="train the prepared run set the notebooks show (resumable)")
    p.add_argument("--preset", default="benchmark")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (benchmarks/ssl_gain.py: 0,1,2)")
    p.add_argument("--out", help="folder (default $CPCL_KIT_PREPARED or ~/.cache/cpcl-kit/prepared/<preset>)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once, one torch thread each on 2 cores")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("doctor", help="check this machine for a preset: device, data, weights, speed, "
                                      "largest batch (CUDA), scaled lr")
    p.add_argument("--method", choices=registry.method_names(), help="default: the preset's (cpcl)")
    _common(p)
    p.add_argument("--out", help="the JSON report (default: doctor-<preset>.json here)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    p.add_argument("--no-search", action="store_true", help="CUDA: skip the largest-batch search")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("data", help="prepare real data (VOC + SBD, Cityscapes trainIds) and check a data tree")
    data = p.add_subparsers(dest="data_command", required=True)
    q = data.add_parser("voc-aug", help="VOC 2012 + SBD -> SegmentationClassAug masks and the train_aug/val "
                                        "lists (resumable)")
    q.add_argument("--voc", required=True, help="the VOCdevkit/VOC2012 folder")
    q.add_argument("--sbd", required=True, help="SBD's benchmark_RELEASE folder")
    q.add_argument("--out", required=True, help="the prepared root for --data-root (may be the VOC2012 folder)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_data)
    q = data.add_parser("cityscapes-trainids", help="gtFine *_labelIds.png -> *_labelTrainIds.png beside them "
                                                    "(resumable)")
    q.add_argument("--root", required=True, help="the Cityscapes folder holding gtFine/")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_data)
    q = data.add_parser("check", help="counts, pixels per class, image sizes and every problem of a data tree; "
                                      "exit 2 when it has problems")
    q.add_argument("root", help="the data root")
    q.add_argument("--dataset", choices=("voc", "cityscapes", "folder"),
                   help="default: guessed from the tree (JPEGImages: voc, leftImg8bit: cityscapes, images: folder)")
    q.add_argument("--labeled-list", help="a split list to check against the tree (one entry a line, as a run reads it)")
    q.add_argument("--unlabeled-list", help="the unlabeled list of the same split")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_data)
    return parser


def one_line(e: KitError) -> str:
    """The message of ``e`` as one line. A KitError raised inside a DataLoader worker comes back
    re-raised with the worker's traceback in its text; keep only the original message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1].strip(), count=1)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning on the command line: one line, like an error (no source line under it)."""
    return f"warning: {' '.join(str(message).split())}\n"


# What torch and numpy say when an allocation fails (CPU, CUDA, numpy), and where they give the size.
_OUT_OF_MEMORY = ("can't allocate memory", "Unable to allocate", "out of memory")
_TRIED = re.compile(r"(?:tried to allocate|unable to allocate) ([\d.]+ ?[KMGTP]i?B|\d+ bytes)", re.IGNORECASE)


def out_of_memory(e: BaseException) -> str | None:
    """The one line for an allocation that failed (None for any other error). No check can foresee
    every size a run reaches, so this is the last word: which settings make a run smaller."""
    text = str(e)
    if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or (isinstance(e, RuntimeError) and any(m in text for m in _OUT_OF_MEMORY))):
        return None
    from .limits import MEMORY

    size = _TRIED.search(text)
    asked = f"an allocation of {size.group(1)} failed" if size else "an allocation failed"
    gpu = type(e).__name__ == "OutOfMemoryError" or "CUDA" in text
    where = "on the GPU" if gpu else f"(this machine holds {MEMORY / 2 ** 30:.1f} GiB)"
    return (f"out of memory: {asked} {where}; expected smaller settings: crop, eval_crop, batch_size, "
            f"unlabeled_batch_size, head_channels, num_workers (predict: --crop; images: fewer pixels)")


def no_home(e: BaseException) -> str | None:
    """The line for "no home folder" (HOME unset and no passwd entry), which the kit's default cache
    needs; None for any other error."""
    if isinstance(e, RuntimeError) and "home directory" in str(e):
        return ("no home folder for the kit's cache (HOME is unset and this user has none); set "
                "$CPCL_KIT_CACHE, or HOME, to a folder this user may write to")
    return None


def main(argv=None) -> int:
    import warnings

    shown = warnings.formatwarning
    warnings.formatwarning = _warning_line
    try:
        first = _Parser(prog="python -m cpcl_kit", add_help=False)
        _plugin_option(first)
        for path in first.parse_known_args(argv)[0].plugin:
            registry.load_plugin(path)
        args = build_parser().parse_args(argv)
        args.func(args)
    except KitError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        line = out_of_memory(e) or no_home(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = shown
    return 0
