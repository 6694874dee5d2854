"""Command-line plumbing shared by the experiments/ scripts: a user error is one line, no traceback.

  if __name__ == "__main__":
    sys.exit(cli.run_main(main))

`run_main(main, argv)` calls `main(argv)`. An error that is the user's (a missing or bad file, a
bad option, a checkpoint directory that cannot be resumed: `USER_ERRORS`, with
`config.ConfigError` and `checkpoint.CheckpointError`) prints `<prog>: error: <message>` and a
hint on stderr and returns exit code 2, as argparse does for a bad option. Exceptions listed in
`failures` (a run that stopped for a reason it states, e.g. a diverged training) print the same
way with exit code 1. With `--debug` on the command line or `CYCLESTAR_DEBUG=1` in the
environment the exception is raised with its traceback instead. Anything else (a bug) always
shows its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError, OSError, KeyError)
# Project exceptions that are user errors too; found by module so that importing this module
# imports neither JAX nor orbax (an exception of a module never imported cannot be raised).
_PROJECT_USER_ERRORS = (("cyclestar_jax.config", "ConfigError"),
                        ("cyclestar_jax.checkpoint", "CheckpointError"))
DEBUG_ENV = "CYCLESTAR_DEBUG"
EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # as a shell reports a process stopped by SIGINT


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
  """`--help` shows every option's default (once: not where the help text already says its
  default) and keeps the description's line breaks."""

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    if "(default" in text or "None:" in text or "None =" in text:
      return text
    return super()._get_help_string(action)


def description(doc: str) -> str:
  """A command's description for `parser`: its docstring's first paragraph."""
  return doc.strip().split("\n\n")[0]


def parser(description: str, **kw: Any) -> argparse.ArgumentParser:
  """An ArgumentParser with `HelpFormatter` and the `--debug` flag `run_main` reads."""
  p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, **kw)
  p.add_argument("--debug", action="store_true",
                 help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
  return p


def user_errors() -> tuple[type[BaseException], ...]:
  """`USER_ERRORS` plus the project's user-error classes whose modules are loaded."""
  extra = tuple(getattr(sys.modules[m], name) for m, name in _PROJECT_USER_ERRORS
                if m in sys.modules and hasattr(sys.modules[m], name))
  return USER_ERRORS + extra


def error_message(e: BaseException) -> str:
  """The message of an exception on one line (a KeyError's without the repr quotes)."""
  msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
  if isinstance(e, OSError) and e.errno and e.strerror and e.filename is None:
    msg = e.strerror  # our own OSError(errno, message): the message without "[Errno N]"
  msg = " ".join(str(msg).split()) or type(e).__name__
  return msg if isinstance(e, (ValueError, KeyError)) else f"{type(e).__name__}: {msg}"


def debug_requested(argv: Sequence[str] | None) -> bool:
  """Whether `--debug` is on the command line or CYCLESTAR_DEBUG is set to a true value."""
  args = sys.argv[1:] if argv is None else list(argv)
  return "--debug" in args or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def run_main(main: Callable[[list[str] | None], Any], argv: Sequence[str] | None = None, *,
             prog: str | None = None,
             failures: tuple[type[BaseException], ...] = ()) -> int:
  """Run `main(argv)`; user errors and stated failures become one line on stderr.

  Args:
    main: the command's `main(argv)`.
    argv: arguments (default: sys.argv[1:]).
    prog: name in the message (default: the script's name).
    failures: exceptions that stop a run for a reason they state (exit code 1).

  Returns:
    The exit code: 0, 1 (a failure) or 2 (a user error; argparse's own errors exit 2 too).
  """
  prog = prog or os.path.basename(sys.argv[0]) or "cyclestar"
  debug = debug_requested(argv)
  shown = warnings.formatwarning
  if not debug:
    warnings.formatwarning = _one_line_warning
  try:
    with warnings.catch_warnings():
      # A filter change resets Python's once-per-location memory, so every command says its
      # warnings even when an earlier one in the same process said the same (tests, notebooks);
      # appended last, it changes no existing filter.
      warnings.simplefilter("default", UserWarning, append=True)
      main(None if argv is None else list(argv))
  except KeyboardInterrupt:
    if debug:
      raise
    print(f"{prog}: interrupted (Ctrl-C); what was written is kept (the newest checkpoint, "
          "finished stages and chunks): run the same command again to continue",
          file=sys.stderr)
    return EXIT_INTERRUPTED
  except failures as e:
    if debug:
      raise
    _report(prog, e, "the run stopped; the message says why")
    return EXIT_FAILURE
  except user_errors() as e:
    if debug:
      raise
    _report(prog, e, "check the files and options named above")
    return EXIT_USER_ERROR
  finally:
    warnings.formatwarning = shown
  return 0


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
  """Warnings of a command as one line each (no source line)."""
  return f"warning: {' '.join(str(message).split())}\n"


def _report(prog: str, e: BaseException, hint: str) -> None:
  print(f"{prog}: error: {error_message(e)}", file=sys.stderr)
  print(f"{prog}: hint: {hint}; --debug (or {DEBUG_ENV}=1) shows the traceback",
        file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Several processes (jax.distributed): one set of flags for every command that can use them.


def add_distributed_args(p: argparse.ArgumentParser) -> None:
  """`--coordinator HOST:PORT --num-processes N --process-id I`, or `--distributed` alone."""
  g = p.add_argument_group("several processes (jax.distributed)")
  g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                 help="address of process 0's coordination service")
  g.add_argument("--num-processes", type=int, default=None, help="number of processes")
  g.add_argument("--process-id", type=int, default=None, help="this process, 0 … N−1")
  g.add_argument("--distributed", action="store_true",
                 help="join a cluster that JAX detects by itself (Slurm, Open MPI, Cloud TPU)")


def check_distributed_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """`p.error` (exit 2) unless the flags of `add_distributed_args` are consistent: the three
  explicit ones together, not with `--distributed`, and 0 ≤ process id < process count."""
  explicit = [args.coordinator is not None, args.num_processes is not None,
              args.process_id is not None]
  if any(explicit) and not all(explicit):
    p.error("--coordinator, --num-processes and --process-id go together")
  if args.distributed and any(explicit):
    p.error("--distributed (auto-detection) excludes --coordinator/--num-processes/--process-id")
  if all(explicit) and (args.num_processes < 1
                        or not 0 <= args.process_id < args.num_processes):
    p.error(f"--process-id {args.process_id} must be in [0, --num-processes "
            f"{args.num_processes})")


# ---------------------------------------------------------------------------------------------
# The options every staged job (experiments.apogee, experiments.new_lines) shares.

PRESETS = ("smoke", "cpu", "paper")
# Both jobs also have `long` (their cpu preset trained longer).
JOB_PRESETS = {"apogee": ("smoke", "cpu", "long", "paper"),
               "new_lines": ("smoke", "cpu", "long", "paper")}
# The long preset's iterations and learning-rate boundaries, for --help (this module stays free
# of JAX, so it cannot import `pipeline.presets`; a test keeps the two equal).
LONG_N_ITER, LONG_LR_BOUNDARIES = 24000, (10000, 20000)


def _k(n: int) -> str:
  """12000 → "12k"."""
  return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def add_job_args(p: argparse.ArgumentParser, *, job: str) -> None:
  """--preset, --out, --n-iter, --seed, --overwrite and --no-progress of a staged job whose
  default run folder is runs/<job>_<preset>."""
  p.add_argument("--preset", choices=JOB_PRESETS.get(job, PRESETS), default=None,
                 help="smoke: minutes, for tests; cpu: ≤ 25 min on 2 CPU cores; long: "
                      f"the cpu preset trained {_k(LONG_N_ITER)} iterations, lr halved at "
                      f"{' and '.join(_k(b) for b in LONG_LR_BOUNDARIES)}, "
                      "about 2¼ hours on 2 cores; paper: "
                      "Table 2 and the paper's schedule (GPU); None: paper on a GPU, cpu on a CPU")
  p.add_argument("--out", default=None, help=f"run folder; None: runs/{job}_<preset>")
  p.add_argument("--n-iter", type=int, default=None,
                 help="training iterations; None: the preset's. The learning-rate boundaries "
                      "are scaled in proportion")
  p.add_argument("--train-limit-s", type=float, default=None, metavar="S",
                 help="stop the Cycle-StarNet training after S seconds of wall clock (then fits "
                      "and report as usual; the report says where it stopped)")
  p.add_argument("--seed", type=int, default=0, help="the mock world's seed")
  p.add_argument("--overwrite", action="store_true",
                 help="start again in an --out folder that holds another run")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_pretrained_args(p: argparse.ArgumentParser) -> None:
  """--pretrained | --train of a job that ships pretrained weights (`pretrained.Weights`)."""
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--pretrained", action="store_true",
                    help="use the package's pretrained weights on the default mock world (the "
                         "default on a CPU when nothing else is asked for)")
  mode.add_argument("--train", action="store_true",
                    help="train the emulator and Cycle-StarNet instead of using the pretrained "
                         "weights")


def check_job_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """`p.error` (exit 2) for a --n-iter below 1 or a --train-limit-s that is not > 0."""
  if args.n_iter is not None and args.n_iter < 1:
    p.error(f"--n-iter must be ≥ 1, got {args.n_iter}")
  if args.train_limit_s is not None and not (math.isfinite(args.train_limit_s)
                                             and args.train_limit_s > 0):
    p.error(f"--train-limit-s must be a number of seconds > 0, got {args.train_limit_s}")
