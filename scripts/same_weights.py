"""Compare two exported diffusers pipelines tensor by tensor: are the weights bit-identical?

    python scripts/same_weights.py benchmark/shapes/pretrained /tmp/rerun_model

Prints each safetensors file's tensor count, how many tensors are identical (values and dtype), and which other
files (configs, tokenizer) differ byte for byte. Exits 1 when any tensor differs.
"""

import argparse
import sys
from pathlib import Path

from safetensors.torch import load_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    files = sorted(p.relative_to(args.a) for p in args.a.rglob("*.safetensors"))
    if not files:
        parser.error(f"{args.a} holds no .safetensors files")
    total = same = 0
    for rel in files:
        if not (args.b / rel).exists():
            print(f"{rel}: missing in {args.b}")
            return 1
        x, y = load_file(args.a / rel), load_file(args.b / rel)
        if x.keys() != y.keys():
            print(f"{rel}: other tensor names")
            return 1
        equal = sum(x[k].dtype == y[k].dtype and x[k].shape == y[k].shape and bool((x[k] == y[k]).all()) for k in x)
        print(f"{rel}: {equal}/{len(x)} tensors identical")
        total, same = total + len(x), same + equal
    print(f"weights: {same}/{total} tensors bit-identical")
    for rel in sorted(p.relative_to(args.a) for p in args.a.rglob("*") if p.is_file() and p.suffix != ".safetensors"):
        other = args.b / rel
        if not other.exists() or other.read_bytes() != (args.a / rel).read_bytes():
            print(f"{rel}: differs (not weights)")
    return 0 if same == total else 1


if __name__ == "__main__":
    sys.exit(main())
