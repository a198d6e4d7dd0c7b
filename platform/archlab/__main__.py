"""The `archlab` command's entry point (also `python -m archlab`): threads first, then the Lightning CLI.

The threads are chosen before torch is imported (archlab.threads), since OpenMP reads its settings when torch loads
it. `archlab --help` lists the subcommands, and `archlab list` what archlab offers, without importing Lightning
(about 7 s on the 2-core machine); `archlab <subcommand> --help` is LightningCLI's own.
"""

import sys

from archlab import threads

USAGE = """\
usage: archlab {fit,validate,test,predict,sweep,study,list} -c CONFIG [--section.key VALUE ...]

Train, tune, track and compare the classic deep-learning architectures.

subcommands:
  fit        train a model, then test its best checkpoint (--test_after_fit false to skip)
  validate   one evaluation epoch over the validation split
  test       one evaluation epoch over the test split
  predict    predictions (or samples) of a checkpoint, written into the run directory
  sweep      an Optuna study over an experiment config; every trial is a `fit`
  study      several runs that answer one question (experiments/<study>), and their report
  list       the nets, tasks, DataModules, configs and sweep files archlab offers, one line each

`archlab <subcommand> --help` lists every option of that subcommand. Short names work where a class path is
expected: --data Digits, --model.net ResNet, --data.help Digits.
Environment: ARCHLAB_THREADS=N sets the intra-op threads of the process (default: the cores other processes leave
free); ARCHLAB_DEBUG=1 shows tracebacks.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    if args[:1] == ["list"]:
        from archlab.catalog import listing

        sys.stdout.write(listing())
        return 0
    threads.configure()
    if args[:1] == ["study"]:
        from archlab.study import main as study_main

        return study_main(args[1:])
    from archlab.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
