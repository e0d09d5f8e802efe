"""``naggs-tune``: tune a LightningCLI recipe with a theory-seeded Optuna study.

Examples::

    # alpha, mu and gamma around the theory's seed; 30 trials in ./naggs-tune.db
    naggs-tune --config recipes/digits_mlp_naggs.yaml --n-trials 30

    # also the batch size and weight decay; pin gamma; a PostgreSQL study shared by many workers
    naggs-tune --config recipes/digits_mlp_naggs.yaml \\
        --param batch_size='[32, 64, 128]' --param weight_decay=1e-5..1e-2:log --param gamma=1.0 \\
        --storage postgresql://user:pw@db-host/optuna --study-name digits-mlp --n-trials 200

Re-running the same command resumes the study. Exit status: 0 done, 2 bad input (config, search
space, metric, storage, options; the message names the problem and no study is changed), 130
interrupted (Ctrl-C: the trial that was training ends FAIL and is trained again on resume).

The working directory is importable, as with ``python -m``: a recipe's ``class_path: mymod.MyNet``
finds ``mymod.py`` next to where the command runs.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import typing
from argparse import SUPPRESS
from pathlib import Path
from typing import TYPE_CHECKING, Any

from naggs_lightning.tune.errors import TuneError

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

    from naggs_lightning.tune.options import TuneOptions

# Only light modules above: torch, Lightning and Optuna are imported inside main(), after it owns Ctrl-C.

__all__ = ["main", "build_parser", "INTERRUPTED_STATUS"]

#: Exit status after Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2).
INTERRUPTED_STATUS = 130

_EPILOG = (
    "Parameter specs: {low: 1.0e-3, high: 10, log: true} | 1e-3..10:log | 16..256 | [32, 64, 128] | "
    "[[64], [128, 64]] (list-valued choices) | a scalar (pinned, not searched). Names: dotted config paths "
    "(optimizer.init_args.lr, data.init_args.batch_size, trainer.max_epochs, ...) or the aliases lr/alpha, mu, "
    "gamma, weight_decay, batch_size."
)


def _add_option(parser: ArgumentParser, option: dataclasses.Field, hint: Any) -> None:
    """One flag of a :class:`TuneOptions` field: name, type, default and help all come from the field."""
    meta = option.metadata
    flag = meta.get("flag")
    if flag is not None:  # a boolean switch: the flag stores the opposite of the default
        parser.add_argument(
            flag, dest=option.name, action="store_const", const=not option.default, default=SUPPRESS, help=meta["help"]
        )
        return
    parser.add_argument(
        "--" + option.name.replace("_", "-"),
        dest=option.name,
        type=meta.get("cli_type") or hint,
        default=option.default,
        help=meta["help"],
    )


def build_parser() -> ArgumentParser:
    """The ``naggs-tune`` parser: ``--config``/``--space``/``--param`` plus one flag per :class:`TuneOptions` field."""
    from jsonargparse import ArgumentParser

    from naggs_lightning.tune.options import TuneOptions

    parser = ArgumentParser(
        prog="naggs-tune",
        description="Tune NAG-GS (alpha, mu, gamma and whatever else you name) on a LightningCLI recipe with an "
        "Optuna study whose first trial is the theory's step for the model's estimated curvature.",
        epilog=_EPILOG,
        exit_on_error=True,
    )
    parser.add_argument(
        "--config",
        action="append",
        required=True,
        metavar="YAML",
        help="LightningCLI config (a recipe); repeat to merge several, later files win",
    )
    parser.add_argument("--space", metavar="YAML", help="search space file: a mapping of parameter name -> spec")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="one parameter of the search space (repeatable; overrides --space)",
    )
    hints = typing.get_type_hints(TuneOptions)
    for option in dataclasses.fields(TuneOptions):
        _add_option(parser, option, hints[option.name])
    return parser


def _space(args: Namespace) -> dict[str, Any]:
    import yaml

    space: dict[str, Any] = {}
    if args.space:
        try:
            data = yaml.safe_load(Path(args.space).read_text())
        except OSError as exc:
            raise TuneError(f"cannot read the search space {args.space!r}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise TuneError(f"search space {args.space!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise TuneError(f"search space {args.space!r} must be a mapping of parameter name -> spec")
        space.update(data)
    for item in args.param:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise TuneError(f"--param expects NAME=SPEC, got {item!r}")
        try:
            space[name.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TuneError(
                f"--param {name.strip()}: the spec {text!r} is not valid YAML: {str(exc).splitlines()[0]}"
            ) from None
    return space


def _study_name(args: Namespace) -> str:
    """``--study-name``, or the default name of the ``--config`` files."""
    from naggs_lightning.tune.options import default_study_name

    return args.study_name or default_study_name(args.config)


def _options(args: Namespace) -> TuneOptions:
    from naggs_lightning.tune.options import TuneOptions, default_output_dir

    values = {f.name: args.get(f.name, f.default) for f in dataclasses.fields(TuneOptions)}
    values["study_name"] = _study_name(args)
    if values["output_dir"] is None:
        values["output_dir"] = default_output_dir(values["study_name"])
    return TuneOptions(**values)


def _interrupted(study_name: str | None) -> str:
    if study_name is None:
        return "naggs-tune: interrupted before the study started; nothing was written"
    return (
        "naggs-tune: interrupted; finished trials are kept in the storage: re-run the same command to resume "
        f"study {study_name!r}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``naggs-tune``; returns the exit status.

    Until the study takes Ctrl-C over (:class:`~naggs_lightning.tune.interrupts.InterruptGuard`) and after
    it gives it back, nothing is half-written: a Ctrl-C then (during the imports, say) prints the one line
    and exits with status 130 at once.
    """
    seen: dict[str, str | None] = {"study": None}

    def exit_now(signum: int, frame: Any) -> None:
        sys.stdout.flush()
        print(_interrupted(seen["study"]), file=sys.stderr, flush=True)
        os._exit(INTERRUPTED_STATUS)

    owner = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, exit_now) if owner else None
    try:
        return _main(argv, seen)
    finally:
        if owner:
            signal.signal(signal.SIGINT, previous)


def _main(argv: list[str] | None, seen: dict[str, str | None]) -> int:
    from naggs_lightning.lightning_cli import import_from_working_directory

    import_from_working_directory()
    args = build_parser().parse_args(argv)
    seen["study"] = _study_name(args)
    try:
        from rich.console import Console

        from naggs_lightning.tune.study import run

        run(args.config, space=_space(args), options=_options(args), console=Console(stderr=False))
    except TuneError as exc:
        print(f"naggs-tune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(seen["study"]), file=sys.stderr)
        return INTERRUPTED_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
