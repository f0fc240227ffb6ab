"""The ``edgeseg`` command line: a thin layer over the library's functions."""

from __future__ import annotations

import argparse
import json
import os
import sys

from edgeseg import __version__


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must be WIDTHxHEIGHT such as 480x360, got {text!r}"
        ) from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return width, height


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


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
    print(f"output         {out[1]}x{out[0]}" + (f"x{out[2]}" if len(out) > 2 else "")
          + f" ({model.outputs[0].dtype})")
    print(f"parameters     {profile.params:,} ({profile.params / 1e6:.3f}M)")
    print(f"GMACs          {profile.gmacs:.3f} (convolutions and dense layers, batch 1)")
    print(f"fp32 weights   {profile.fp32_megabytes:.2f} MB")
    print(f"int8 weights   {profile.int8_megabytes:.2f} MB")
    return 0


# --- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeseg", description="Real-time segmentation for edge devices."
    )
    parser.add_argument("--version", action="version", version=f"edgeseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"edgeseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
