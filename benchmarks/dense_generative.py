"""Issue 4's targets: U-Net test Dice on the generated cells with 32 labels, and test FID of every digits generator
next to an untrained generator's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dense_generative.py [--configs unet_cells dcgan_digits ...]

Targets: `unet_cells` test/dice >= 0.90 on CPU in its default config; the DCGAN's test/fid well below the untrained
generator's. Each config runs through the one training path (`archlab.cli.run`), its runs under runs/bench-dense/.
"""

import argparse
import time
from pathlib import Path

from archlab.cli import run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["unet_cells", "dcgan_digits", "vae_digits", "ae_digits", "dae_digits", "sparse_ae_digits"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--runs_root", default="runs/bench-dense")
    args = parser.parse_args()
    common = ["--tracker", "csv", "--runs_root", args.runs_root, "--trainer.enable_progress_bar", "false"]
    rows = []
    for name in args.configs:
        config = str(ROOT / "configs" / f"{name}.yaml")
        start = time.perf_counter()
        cli = run(["fit", "-c", config, *common])
        wall = time.perf_counter() - start
        metric = "test/dice" if name.startswith("unet") else "test/fid"
        rows.append((name, metric, cli.results.get(metric, float("nan")), wall))
        if name == "dcgan_digits":
            untrained = run(["test", "-c", config, *common])
            rows.append(
                ("dcgan_digits (untrained)", "test/fid", float(untrained.trainer.callback_metrics["test/fid"]), 0)
            )
    print(f"\n{'config':<28}{'metric':<12}{'value':>10}{'wall s':>10}")
    for name, metric, value, wall in rows:
        print(f"{name:<28}{metric:<12}{value:>10.4f}{wall:>10.1f}")


if __name__ == "__main__":
    main()
