"""Errors a training run raises for the user to act on (the command line prints them as one line).

Here, apart from the code that raises them, so that the command line can name them without
importing torch, Ray Train or Serve: a config error is then reported in a second, not after them.
"""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; never silently restart from step 0."""


class TeacherUnavailable(RuntimeError):
    """The teacher did not answer within the configured time, retries included."""
