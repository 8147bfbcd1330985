"""``ttdist convert``: convert a checkpoint once into the converted-weight cache, with progress."""

from __future__ import annotations

import argparse
from pathlib import Path

from ttdist.cli import EXIT_USAGE, CommandError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert weights into the converted-weight cache",
        description="Shard a Hugging Face Llama checkpoint (config.json + *.safetensors) for a mesh and write "
                    "it once to the converted-weight cache: one safetensors file per layer holding every chip's "
                    "piece, streamed one tensor at a time. The entry is keyed by the checkpoint's identity (config, "
                    "safetensors headers, sizes, mtimes), the layout and the storage dtype (bf16; float32 for "
                    "float32). Prints the entry's directory. Converting again reuses the entry.",
        epilog="examples:\n  ttdist convert smollm2 --mesh n300\n"
               "  ttdist convert ./my-llama --mesh 8x4 --dtype bfloat8_b --cache-dir /data/ttdist\n"
               "  ttdist convert ./my-llama --mesh tg --verify-hash",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint directory, or 'smollm2' for the bundled SmolLM2-135M-Instruct")
    p.add_argument("--mesh", default="n300", help="n150, n300, t3k, tg or any RxC shape (default %(default)s)")
    p.add_argument("--dtype", default="bfloat16",
                   help="weight dtype (float32, bfloat16, bfloat8_b, bfloat4_b) or precision preset (accuracy, "
                        "performance) (default %(default)s)")
    p.add_argument("--cache-dir", metavar="DIR", help="converted-weight cache (default ~/.cache/ttdist/weights)")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    p.add_argument("--verify-hash", action="store_true",
                   help="also hash every byte of the checkpoint and reconvert if the entry recorded another hash")
    p.set_defaults(func=run)


def _checkpoint(model: str) -> Path:
    if model == "smollm2":
        from ttdist.model import smollm2

        return smollm2.materialize()
    path = Path(model)
    if not path.is_dir():
        raise CommandError(f"{model}: no such checkpoint directory (give a folder with config.json and "
                           "*.safetensors, or 'smollm2')", EXIT_USAGE)
    return path


def run(args: argparse.Namespace) -> int:
    from ttdist.model.weights import convert_checkpoint

    try:
        entry = convert_checkpoint(_checkpoint(args.model), mesh=args.mesh, dtype=args.dtype,
                                   cache_dir=args.cache_dir, progress=not args.no_progress,
                                   verify_hash=args.verify_hash)
    except ValueError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    except OSError as e:
        raise CommandError(f"{e.filename or args.model}: {e.strerror or e}") from None
    print(entry)
    return 0
