"""Fill .whl/ with what the GPU machine lacks, on a machine that reaches PyPI: `benchmarks/gpu/run.sh` installs it.

    python benchmarks/gpu/wheels.py                 # .whl/: polars wheels + the saved test tokenizer
    python benchmarks/gpu/wheels.py --dest DIR --python-version 3.12 --platform manylinux_2_17_x86_64

The GPU machine (docs/benchmarks.md, "GPU") has PyTorch with CUDA, transformers, accelerate, peft, pyarrow, typer,
tqdm and matplotlib; of what the CUDA lane and the measurements import it lacks polars, and its tests lack the
embedded tokenizer (the gguf package and the GGUF are not there). The wheels are the versions installed here, so
the GPU runs what the tests here ran; binary wheels only, for the machine's Python and platform (x86-64 Linux).
Everything carried travels in the 64 MiB of one device call, so the total is checked.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

PACKAGES = ("polars", "polars-runtime-32")  # polars 2 is a pure-Python front end over its runtime wheel
CARRY_LIMIT_MIB = 64  # one device call carries the working tree and .whl/ together
PLATFORM = re.compile(r"^(manylinux_2_\d+|manylinux2014|manylinux1)_x86_64$")


class WheelsError(SystemExit):
    pass


def check_target(python_version: str, platform: str) -> None:
    """Refuse a target the GPU machine is not: its Python is CPython 3.x and its processor x86-64 Linux.

    Raises:
        WheelsError: naming the value and what to give instead.
    """
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise WheelsError(f"wheels.py: --python-version {python_version!r} is not a CPython 3.x version like 3.12 "
                          "(the GPU machine's: python3 --version there)")
    if not PLATFORM.match(platform):
        raise WheelsError(f"wheels.py: --platform {platform!r} is not an x86-64 Linux (manylinux) platform; the GPU "
                          "machine is x86-64 Linux: give manylinux_2_17_x86_64 (or manylinux_2_28_x86_64)")


def download(dest: Path, python_version: str, platform: str) -> list[Path]:
    pins = [f"{name}=={version(name)}" for name in PACKAGES]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               python_version, "--implementation", "cp", "--platform", platform, "--platform",
               "manylinux2014_x86_64", "-d", str(dest), *pins]
    subprocess.run(command, check=True)
    return sorted(dest.glob("*.whl"))


def save_tokenizer(dest: Path) -> Path:
    """The embedded SmolLM2 tokenizer, saved as files (the tests' `real_tokenizer_dir` reads it there)."""
    from transformers import AutoTokenizer

    from syllabus.core.models import find_gguf

    gguf = find_gguf()
    out = dest / "tokenizer"
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".whl"))
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--platform", default="manylinux_2_17_x86_64")
    args = parser.parse_args()
    check_target(args.python_version, args.platform)
    if args.dest.exists():  # one version of each package: two would stop the install there
        shutil.rmtree(args.dest)
    args.dest.mkdir(parents=True)
    wheels = download(args.dest, args.python_version, args.platform)
    save_tokenizer(args.dest)
    size = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
    print(f"{args.dest}: {len(wheels)} wheels and the tokenizer, {size / 2**20:.1f} MiB")
    if size > (CARRY_LIMIT_MIB - 8) * 2**20:
        raise WheelsError(f"wheels.py: {args.dest} holds {size / 2**20:.1f} MiB, leaving under 8 MiB of a device "
                          f"call's {CARRY_LIMIT_MIB} MiB for the repository")


if __name__ == "__main__":
    main()
