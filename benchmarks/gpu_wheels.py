"""Download the wheels benchmarks/gpu_check.py needs on the lent GPU machine, and check that they fit.

    python benchmarks/gpu_wheels.py                      # -> benchmarks/gpu_wheels/ (git-ignored)

Reads ``benchmarks/gpu_requirements.txt`` (exact versions), downloads each wheel for CPython 3.12 on x86-64 Linux
without dependencies (the list is complete), and checks:

* the wheels and the working tree (the files git tracks) together within 64 MiB, what the device tool carries;
* the package's floor on transformers (``pyproject.toml``) not above 5.17, the version on the GPU machine. If it is,
  this says so and stops: look at the floor before carrying anything.

On the GPU machine (the device tool's ``run``, with ``carry=["benchmarks/gpu_wheels"]``)::

    pip install --no-index --no-deps benchmarks/gpu_wheels/*.whl && pip install --no-index --no-deps \\
        --no-build-isolation -e . && python benchmarks/gpu_check.py --output $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIMIT_MIB = 64
GPU_TRANSFORMERS = "5.17"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"]


def requirements(path: str) -> list[str]:
    with open(path) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def transformers_floor_problem(pyproject: str = os.path.join(ROOT, "pyproject.toml")) -> str | None:
    """A message when ``pyproject`` asks for a transformers that excludes the GPU machine's."""
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    with open(pyproject, "rb") as f:
        deps = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
    for req in deps:
        if req.name == "transformers" and not req.specifier.contains(GPU_TRANSFORMERS):
            return (
                f"pyproject.toml asks for transformers{req.specifier}, which excludes {GPU_TRANSFORMERS} on the GPU "
                "machine: look at the floor before running the GPU check there."
            )
    return None


def tree_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum(
        os.path.getsize(os.path.join(ROOT, f.decode()))
        for f in files
        if f and os.path.isfile(os.path.join(ROOT, f.decode()))
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requirements", default=os.path.join(HERE, "gpu_requirements.txt"))
    p.add_argument("--dest", default=os.path.join(HERE, "gpu_wheels"))
    p.add_argument("--check_only", action="store_true", help="Check the floor and the sizes of what is in --dest.")
    args = p.parse_args(argv)

    problem = transformers_floor_problem()
    if problem:
        print(f"gpu_wheels: {problem}")
        return 1
    pins = requirements(args.requirements)
    unpinned = [r for r in pins if "==" not in r]
    if unpinned:
        print(f"gpu_wheels: every requirement needs an exact version (==): {unpinned}")
        return 1
    if not args.check_only:
        os.makedirs(args.dest, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
        cmd += ["--implementation", "cp", "--abi", "cp312", "--abi", "none", "--abi", "abi3", "-d", args.dest]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        subprocess.run(cmd + pins, check=True)
    wheels = sorted(f for f in os.listdir(args.dest) if f.endswith(".whl"))
    names = {w.split("-")[0].lower().replace("_", "-") for w in wheels}
    missing = [r for r in pins if r.split("==")[0].lower().replace("_", "-") not in names]
    if missing:
        print(f"gpu_wheels: no wheel in {args.dest} for {missing}")
        return 1
    sizes = {w: os.path.getsize(os.path.join(args.dest, w)) for w in wheels}
    tree = tree_bytes()
    total = sum(sizes.values()) + tree
    for w, size in sorted(sizes.items(), key=lambda x: -x[1]):
        print(f"{size / 2**20:8.2f} MiB  {w}")
    print(f"{tree / 2**20:8.2f} MiB  working tree (files git tracks)")
    print(f"{total / 2**20:8.2f} MiB  in all (limit {LIMIT_MIB} MiB)")
    if total > LIMIT_MIB * 2**20:
        print(f"gpu_wheels: {total / 2**20:.1f} MiB is over the {LIMIT_MIB} MiB the device tool carries.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
