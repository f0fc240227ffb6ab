"""The ``edgeseg`` command line: a thin layer over the library's functions."""

from __future__ import annotations

import argparse
import json
import sys

from edgeseg import __version__


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height), as an argparse type (``edgeseg.io.parse_size``)."""
    from edgeseg.io import parse_size as parse

    try:
        return parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_threads(text: str) -> list[int]:
    """'4' or '1,2,4' -> [4] / [1, 2, 4], as an argparse type (``bench.runner.parse_threads``)."""
    from edgeseg.bench.runner import parse_threads as parse

    try:
        return parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_precisions(text: str) -> list[str]:
    """'fp32' or 'fp32,bf16' -> ['fp32'] / ['fp32', 'bf16'], as an argparse type
    (``bench.runner.parse_precisions``)."""
    from edgeseg.bench.runner import parse_precisions as parse

    try:
        return parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_options(pairs: list[str]) -> dict:
    """['width=0.5', 'padding=valid'] -> {'width': 0.5, 'padding': 'valid'} (JSON values)."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"model option must be KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _quiet_tensorflow(*paths: str | None) -> None:
    """Starts TensorFlow without its start-up noise (``edgeseg.quiet``); with ``paths``, only
    when one of them is a .keras model (the .tflite / .onnx runtimes need no TensorFlow)."""
    if paths and not any(str(p or "").endswith(".keras") for p in paths):
        return
    from edgeseg.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()


# --- commands -----------------------------------------------------------------------------------


def cmd_models(args) -> int:
    from edgeseg.models import get_spec, list_models

    for name in list_models():
        spec = get_spec(name)
        print(f"{name:10s} {spec.summary}")
        print(f"{'':10s} {spec.paper}; output stride {spec.output_stride}; "
              f"default input {spec.default_size[1]}x{spec.default_size[0]}")
        for option, (default, help_text) in spec.options.items():
            print(f"{'':10s}   --option {option}={default!r}: {help_text}")
    return 0


def cmd_info(args) -> int:
    _quiet_tensorflow()
    from edgeseg.models import build, get_spec
    from edgeseg.models.analysis import profile_model

    spec = get_spec(args.model)
    width, height = args.size or spec.default_size[::-1]
    model = build(args.model, args.num_classes, (height, width, 3), **parse_options(args.option))
    profile = profile_model(model)
    if args.json:
        print(json.dumps(profile.as_dict(), indent=2))
        return 0
    out = profile.output_shape
    print(f"model          {args.model} ({spec.paper})")
    print(f"input          {width}x{height}x3")
    if isinstance(model.output, dict):  # detections: one padded tensor per output
        for name, tensor in model.output.items():
            print(f"output         {name} {tuple(tensor.shape)} ({tensor.dtype})")
    else:
        print(f"output         {out[1]}x{out[0]}" + (f"x{out[2]}" if len(out) > 2 else "")
              + f" ({model.outputs[0].dtype})")
    print(f"parameters     {profile.params:,} ({profile.params / 1e6:.3f}M)")
    print(f"GMACs          {profile.gmacs:.3f} (multiply-accumulates of the convolutions and "
          "dense layers, batch 1)")
    print(f"GFLOPs         {profile.gflops:.3f} (2 per MAC)")
    print(f"element-wise   {profile.elementwise_ops / 1e9:.3f} G ops (bias adds, batch norm, "
          "activations, adds, pooling; not in the FLOPs)")
    print(f"fp32 weights   {profile.fp32_megabytes:.2f} MB")
    print(f"int8 weights   {profile.int8_megabytes:.2f} MB")
    return 0


def cmd_data_synth(args) -> int:
    from edgeseg.data import write_synthetic

    width, height = args.size
    root = write_synthetic(args.out_dir, n_train=args.n_train, n_val=args.n_val,
                           n_test=args.n_test, size=(width, height), seed=args.seed)
    print(f"wrote {args.n_train} train / {args.n_val} val / {args.n_test} test scenes "
          f"({width}x{height}) to {root}; use it as --data synthetic:{root}")
    return 0


def cmd_train(args) -> int:
    _quiet_tensorflow()
    from edgeseg.train.trainer import TrainConfig, train

    config = TrainConfig(
        model=args.model, data=args.data, out=args.out, size=args.size, epochs=args.epochs,
        batch=args.batch, lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer,
        momentum=args.momentum, class_weighting=args.class_weighting,
        weight_map={"on": True, "off": False}.get(args.weight_map),
        elastic={"on": True, "off": False}.get(args.elastic), loss=args.loss,
        steps_per_epoch=args.steps_per_epoch, model_options=parse_options(args.option),
        init_from=args.init_from, resume=args.resume, skip_bad=args.skip_bad, seed=args.seed,
        mixed_precision=args.mixed_precision, verbose=0 if args.quiet else 1,
        max_minutes=args.max_minutes,
    )
    record = train(config)
    best = record.get("best") or {}
    skipped = ", ".join(f"{len(files)} {split}"
                        for split, files in (record.get("skipped") or {}).items() if files)
    left_out = f"; left out bad samples (--skip-bad): {skipped}" if skipped else ""
    if config.task == "instance":
        print(f"done: {len(record['epochs'])} epochs; best val mask AP50 "
              f"{100 * (best.get('mask_AP50') or 0):.1f} (mask AP "
              f"{100 * (best.get('mask_AP') or 0):.1f}) at epoch {best.get('epoch')}{left_out}; "
              f"models and run.json in {args.out}")
        return 0
    print(f"done: {len(record['epochs'])} epochs; best val mIoU {100 * best.get('miou', 0):.1f} "
          f"at epoch {best.get('epoch')}{left_out}; models and run.json in {args.out}")
    return 0


def cmd_eval(args) -> int:
    _quiet_tensorflow(args.model)
    from edgeseg.evaluate import evaluate, format_report

    result = evaluate(args.model, args.data, split=args.split, limit=args.limit,
                      save_vis=args.save_vis, json_path=args.json)
    if result.get("task") == "instance":
        from edgeseg.evaluate import format_instance_report

        print(format_instance_report(result))
        return 0
    print(format_report(result, result["classes"]))
    return 0


def cmd_export(args) -> int:
    _quiet_tensorflow()
    from edgeseg.converters.export import ExportRequest, export

    report = export(ExportRequest(
        model=args.model, format=args.format, quant=args.quant, out=args.out, calib=args.calib,
        num_calib=args.num_calib, io=args.io, output=args.output, size=args.size,
        val_data=args.val_data, num_val=args.num_val, max_miou_drop=args.max_miou_drop,
        qat_epochs=args.qat_epochs, runtime=args.runtime,
    ))
    print(f"wrote {report['artifact']} ({report['artifact_bytes'] / 1e6:.2f} MB) in "
          f"{report['convert_seconds']:.0f} s")
    for runtime, fit in (report.get("runtimes") or {}).items():
        macs = "n/a" if fit["xnnpack_macs"] is None else f"{100 * fit['xnnpack_macs']:.0f}%"
        loads = {True: "loads", False: "does NOT load", None: "not vouched for"}[fit["loads"]]
        print(f"{runtime}: {loads}; XNNPACK takes {fit['xnnpack_nodes']} operators, {macs} of "
              "the MACs")
    check = report["validation"]
    if check and report["task"] == "instance":  # detections matched with the Keras model's
        iou = (f"box IoU {check['box_iou_mean']:.3f}, mask IoU {check['mask_iou_mean']:.3f} "
               "(mean)" if check["matched"] else "no matches")
        print(f"validation on {check['num_images']} images of {check['data']} "
              f"({report['quant_mode']}): {check['matched']} of {check['keras_detections']} "
              f"Keras detections matched ({check['export_detections']} exported), {iou}; "
              f"mask AP keras {100 * check['keras']['mask_AP']:.2f} -> export "
              f"{100 * check['export']['mask_AP']:.2f} (drop {check['mask_ap_drop_points']:.2f} "
              "points)")
    elif check:
        print(f"validation on {check['num_images']} images of {check['data']}: pixel agreement "
              f"{100 * check['pixel_agreement']:.2f}%, mIoU keras {100 * check['miou_keras']:.2f} "
              f"-> export {100 * check['miou_export']:.2f} (drop {check['miou_drop_points']:.2f} points)")
    return 0


def cmd_quickstart(args) -> int:
    _quiet_tensorflow()
    from edgeseg.quickstart import quickstart

    summary = quickstart(args.out, train_minutes=args.train_minutes)
    failed = [name for name, step in summary["steps"].items() if "error" in step]
    return 1 if failed else 0


def cmd_demo(args) -> int:
    _quiet_tensorflow(getattr(args, "model", None))
    from edgeseg.demos.segment_live import run_from_args

    return run_from_args(args)


def cmd_bench(args) -> int:
    import warnings
    from pathlib import Path

    from edgeseg.bench.runner import (
        DEFAULT_SIZES,
        PrecisionSkippedWarning,
        benchmark,
        format_row,
        parse_sizes,
        write_jsonl,
    )

    if args.artifacts and args.artifacts[0] == "report":
        return cmd_bench_report(args)
    if not args.artifacts:
        raise ValueError("edgeseg bench needs at least one model file (.tflite, .onnx, .keras)")
    if not args.out:
        raise ValueError("edgeseg bench needs --out results.jsonl")
    # No TensorFlow here: each row runs in its own process, which loads what its model needs.
    sizes = parse_sizes(args.sizes) if args.sizes else DEFAULT_SIZES
    failed = 0
    notes = set()
    show_warning = warnings.showwarning

    def show(message, category, *where, **options):
        if issubclass(category, PrecisionSkippedWarning):  # a note, not a problem
            print(f"  note: {message}", flush=True)
        else:
            show_warning(message, category, *where, **options)

    with warnings.catch_warnings():
        warnings.showwarning = show
        for row in benchmark(args.artifacts, sizes, threads=args.threads,
                             precisions=args.precision, warmup=args.warmup, runs=args.runs,
                             min_seconds=args.min_seconds, resize=args.resize,
                             model_size=args.model_size, timeout=args.timeout):
            write_jsonl([row], args.out)
            print(format_row(row), flush=True)
            failed += row["error"] is not None
            note = (Path(row["artifact"]).name, row.get("note"))
            if note[1] and note not in notes:
                notes.add(note)
                print(f"  note: {note[0]}: {note[1]}", flush=True)
    print(f"results appended to {args.out}" + (f"; {failed} rows failed" if failed else ""))
    return 0


def cmd_check(args) -> int:
    from edgeseg.runtimes import check_failures, check_model, format_check

    try:
        result = check_model(args.model, args.runtime, measure=not args.no_load)
    except (ValueError, FileNotFoundError) as error:
        print(f"edgeseg check: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if args.json else format_check(result))
    # without --runtime the table is information; with it, a gate for that runtime
    return 1 if args.runtime and check_failures(result) else 0


def cmd_bench_report(args) -> int:
    from edgeseg.bench.report import merge_results, write_report

    results = args.artifacts[1:]
    if not results or not args.out:
        raise ValueError("usage: edgeseg bench report RESULTS.jsonl... --out DIR")
    paths = write_report(merge_results(results), args.out)
    for kind, path in paths.items():
        if path:
            print(f"{kind}: {path}")
    return 0


# --- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeseg", description="Real-time segmentation for edge devices."
    )
    parser.add_argument("--version", action="version", version=f"edgeseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("quickstart", help="synthetic data -> train ENet -> export -> bench -> demo")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--train-minutes", type=float, default=3.0)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("models", help="list the models in the zoo")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="parameters, GMACs, output shape and size of a model")
    p.add_argument("model")
    p.add_argument("--num-classes", type=int, default=12)
    p.add_argument("--size", type=parse_size, help="input WxH (default: the paper's size)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="model option, e.g. width=0.5 (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("data", help="datasets: write the synthetic set")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    q = data_sub.add_parser("synth", help="write the built-in synthetic dataset (CamVid layout + COCO)")
    q.add_argument("out_dir")
    q.add_argument("--n-train", type=int, default=300)
    q.add_argument("--n-val", type=int, default=60)
    q.add_argument("--n-test", type=int, default=0)
    q.add_argument("--size", type=parse_size, default=(480, 360), help="WxH (default 480x360)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_data_synth)

    p = sub.add_parser("train", help="train a model with its paper's recipe (flags override it)")
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="synthetic",
                   help="data spec: camvid:PATH, cityscapes:PATH, voc:PATH, folder:PATH, "
                        "coco:PATH, synthetic[:PATH]")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--size", type=parse_size,
                   help="crop / model WxH (default: the model's training size, 480x360; "
                        "instance models 512x512, square)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, help="per-device batch (recipe default)")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=["adam", "sgd"])
    p.add_argument("--momentum", type=float)
    p.add_argument("--class-weighting", choices=["enet", "median", "none"])
    p.add_argument("--weight-map", choices=["on", "off"], help="U-Net border weight map")
    p.add_argument("--elastic", choices=["on", "off"], help="U-Net elastic deformation")
    p.add_argument("--loss", choices=["ce", "dice"], default="ce")
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="model option")
    p.add_argument("--init-from", help="a .keras model to start from (transfer learning)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out and count bad samples (unreadable, wrong size, bad labels) "
                        "instead of stopping at the first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this budget")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model on a data spec (mIoU, accuracies)")
    p.add_argument("model", help="a .keras file")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.add_argument("--save-vis", help="write image | truth | prediction PNGs to this folder")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "bench",
        help="latency of exported models per stage; 'bench report' merges results of many devices",
        description="edgeseg bench ARTIFACT... --out results.jsonl | "
                    "edgeseg bench report RESULTS.jsonl... --out DIR. Each artifact, frame size, "
                    "precision and thread count runs in its own process.",
    )
    p.add_argument("artifacts", nargs="*", metavar="ARTIFACT",
                   help="model files (.tflite, .onnx, .keras), or 'report' then result files")
    p.add_argument("--sizes", help="frame sizes, e.g. 480x320,640x360,1280x720,1920x1080")
    p.add_argument("--threads", type=parse_threads,
                   help="inference threads (TFLite / onnxruntime): a number, or a comma list "
                        "to sweep, e.g. 1,2,4")
    p.add_argument("--precision", type=parse_precisions, default=["fp32"],
                   help="what a .keras model computes in on the active Keras backend: fp32, "
                        "bf16 or fp16 (Keras' mixed dtype policy), or a comma list to sweep, "
                        "e.g. fp32,bf16 (default fp32). .tflite / .onnx files run as exported: "
                        "they give fp32 rows only")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=20, help="at least this many timed runs")
    p.add_argument("--min-seconds", type=float, default=2.0, help="and at least this long")
    p.add_argument("--resize", choices=["resize", "letterbox"], default="resize")
    p.add_argument("--model-size", choices=["artifact", "frame"], default="artifact",
                   help="the network's input: the artifact's own (the frame is resized to it; "
                        "default) or the frame's (a .keras model rebuilt at that size, a .tflite "
                        "resized where its graph allows; otherwise the row notes its real input)")
    p.add_argument("--timeout", type=float,
                   help="seconds one row's process may run before it is stopped")
    p.add_argument("--out", help="results .jsonl (appended) or, for 'report', a folder")
    p.set_defaults(func=cmd_bench)

    from edgeseg.converters.formats import EXPORT_FORMATS, IO_TYPES, OUTPUTS, QUANT_MODES

    p = sub.add_parser(
        "export", help="export a .keras model to tflite / onnx / tensorrt / saved_model",
        description="formats: " + "; ".join(
            f"{f.name} ({f.suffix or 'folder'}): --quant {'/'.join(f.quant)}"
            + (", needs an NVIDIA GPU" if f.needs_gpu else "") for f in EXPORT_FORMATS.values()),
    )
    p.add_argument("model", help="a .keras file, semantic or instance (run.json beside it gives "
                                 "classes, size, data)")
    p.add_argument("--format", choices=list(EXPORT_FORMATS), default="tflite")
    p.add_argument("--quant", choices=QUANT_MODES, default="none")
    p.add_argument("--calib", help="data spec for int8 calibration (default: the training data)")
    p.add_argument("--num-calib", type=int, default=100)
    p.add_argument("--io", choices=IO_TYPES, default="float32", help="int8 model input/output type")
    p.add_argument("--output", choices=OUTPUTS, default="logits")
    p.add_argument("--size", type=parse_size, help="input WxH (default: the training size)")
    p.add_argument("--val-data", help="data spec for validation (default: --calib's)")
    p.add_argument("--num-val", type=int, default=20)
    p.add_argument("--max-miou-drop", type=float,
                   help="fail if mIoU (instance models: mask AP) drops more (points)")
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--runtime", help="the TFLite runtime the .tflite is for, like a pip "
                                     "requirement (tflite-runtime==2.14.0): fail before writing "
                                     "when it lacks an operator the export uses; warn when an "
                                     "int8 export would run without XNNPACK there")
    p.add_argument("--out", help="destination file")
    p.set_defaults(func=cmd_export)

    from edgeseg.demos.segment_live import add_arguments as add_demo_arguments

    p = sub.add_parser(
        "check", help="a .tflite's operators and versions, and for each runtime edgeseg knows "
                      "whether it loads and how much of it XNNPACK runs (no TensorFlow needed)")
    p.add_argument("model", help="a .tflite file")
    p.add_argument("--runtime", help="only this runtime, written like a pip requirement "
                                     "(tflite-runtime==2.14.0, ai-edge-litert==2.3.0); exits 1 "
                                     "when the model will not load there or its int8 graph would "
                                     "run without XNNPACK there")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-load", action="store_true",
                   help="do not also load the model with the runtime installed here")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="live segmentation of a camera, stream, video or folder, "
                       "with per-stage ms / fps")
    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as error:
        print(f"edgeseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
