"""The ``tightdistill`` command line: one subcommand per job, each defined beside the code it runs.

Known user errors (bad config, missing data or model, unreachable cluster, refused request) are
printed as one line, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

# Modules that contribute subcommands through ``register(subparsers)``.
COMMAND_MODULES = ("student_trainer.cli", "student_trainer.experiment", "teacher_service.cli", "teacher_trainer.cli")

# This project's own packages: a missing module that is none of them is a dependency of the
# ``all`` extra, which the base install (only the HTTP client) leaves out.
OWN_PACKAGES = ("common", "teacher_service", "student_trainer", "teacher_trainer")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user has something to fix: printed as one line, not a traceback."""
    from common.config import ConfigError
    from common.datasets import DataError
    from common.model_registry import ModelNotFoundError
    from common.ray_runtime import RayConnectError
    from student_trainer.errors import CheckpointError, TeacherUnavailable
    from teacher_service.errors import TeacherServiceError

    return (ConfigError, DataError, ModelNotFoundError, RayConnectError, FileNotFoundError,
            TeacherServiceError, TeacherUnavailable, CheckpointError)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="tightdistill",
        description="Distil slow IR teachers into small dual-encoder students, with the teacher served live on Ray Serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        # --help and usage errors exit here, before the imports of the error types (Ray Train and
        # the trainer's modules) that only a command that runs needs.
        args = parser.parse_args(argv)
        errors = user_errors()
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] not in OWN_PACKAGES:
            # A client-only install (the base package) has no trainer or service to run.
            print(f"tightdistill: the command line needs the full install (missing {exc.name!r}): "
                  "pip install 'tightdistill[all]'", file=sys.stderr)
            return 2
        raise
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        return int(handler(args) or 0)
    except errors as exc:
        print(f"tightdistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tightdistill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
