"""The `archlab` command's entry point (also `python -m archlab`): threads first, then the Lightning CLI.

The threads are chosen before torch is imported (archlab.threads), since OpenMP reads its settings when torch loads
it. `archlab --help` lists the subcommands without importing Lightning (about 7 s on the 2-core machine);
`archlab <subcommand> --help` is LightningCLI's own.
"""

import sys

from archlab import threads

USAGE = """\
usage: archlab {fit,validate,test,predict,sweep} -c CONFIG [--section.key VALUE ...]

Train, tune, track and compare the classic deep-learning architectures.

subcommands:
  fit        train a model, then test its best checkpoint (--test_after_fit false to skip)
  validate   one evaluation epoch over the validation split
  test       one evaluation epoch over the test split
  predict    predictions (or samples) of a checkpoint, written into the run directory
  sweep      an Optuna study over an experiment config; every trial is a `fit`

`archlab <subcommand> --help` lists every option of that subcommand.
Environment: ARCHLAB_THREADS=N sets the intra-op threads of the process (default: the cores other processes leave
free); ARCHLAB_DEBUG=1 shows tracebacks.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    threads.configure()
    from archlab.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
