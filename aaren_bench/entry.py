"""``train.py``'s command line: the arguments put in Hydra's order, the config checked against the
schema before anything is built, and every mistake printed as ``error: <what, what to do>``.

Hydra prints its own errors (an unknown config name, a typo'd key, an override it cannot parse)
with exit status 1, and some of them fail inside its formatting. :func:`launch` runs Hydra with
``HYDRA_FULL_ERROR=1``, so such an error reaches it as an exception, and prints it the suite's
way with exit status 2. ``HYDRA_FULL_ERROR=1`` or ``AAREN_DEBUG=1`` set by the user shows the
traceback instead. Exit statuses: 2 a mistake in the configuration or the data, 3 a run that
failed (``failed.json``), 74 the runs root cannot be written, 75 the cell is running elsewhere.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

from aaren_bench.errors import SuiteError, storage_error

HINT = "(python train.py <overrides> --cfg job prints the configuration; HYDRA_FULL_ERROR=1 shows a traceback)"


def show_tracebacks() -> bool:
    return os.environ.get("AAREN_DEBUG") == "1"


def job(cfg) -> float | None:
    """One Hydra job: the schema first (no torch imported for a mistake), then the run."""
    from aaren_bench.schema import validate

    try:
        validate(cfg)
    except SuiteError as e:
        from aaren_bench.cellfiles import remove_unstarted

        remove_unstarted(cfg.get("run_dir"), keep_lock=True)  # the folder Hydra made for its log
        fail(e)
    from aaren_bench.run import main_entry

    return main_entry(cfg)


def fail(e: SuiteError) -> None:
    from aaren_bench.cluster import in_local_sweep

    if show_tracebacks():
        raise e
    print(f"error: {e}", file=sys.stderr)
    if in_local_sweep():  # a misconfigured cell of a local sweep: reported, the sweep goes on
        raise e
    sys.exit(e.exit_code)


def launch(hydra_main: Callable[[], Any], argv: list[str]) -> None:
    """Run ``hydra_main`` on ``argv`` (train.py's arguments) and report every mistake as ``error:``."""
    from aaren_bench.study import normalize_argv

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        os.environ.setdefault("AAREN_DEBUG", "1")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises; the message is printed below
    try:
        sys.argv[1:] = normalize_argv(list(argv))
        hydra_main()
    except Exception as e:  # noqa: BLE001 - the suite's, Hydra's and the file system's errors, reported below
        report(e)


def report(e: Exception) -> None:
    """Print ``e`` as ``error: ...`` and exit with its status; re-raise what is not a user's mistake."""
    found = suite_cause(e)
    if found is not None:
        fail(found)
    if show_tracebacks():
        raise e
    if is_config_error(e):  # before OSError: Hydra's MissingConfigException is an IOError too
        print(f"error: {config_message(e)}\n{HINT}", file=sys.stderr)
        sys.exit(2)
    err = storage_error(e) if isinstance(e, OSError) else None
    if err is None:
        raise e
    fail(err)


def suite_cause(e: BaseException) -> SuiteError | None:
    """A suite error somewhere in the chain (raised inside a resolver while Hydra composed)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, SuiteError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def is_config_error(e: Exception) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(e, (HydraException, OmegaConfBaseException))


def config_message(e: Exception) -> str:
    """Hydra's message on one line, with what to do for the common cases."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    text = " ".join(str(e).split())
    cause = e.__cause__
    if isinstance(e, ConfigCompositionException) and "Could not override" in text:
        key = text.split("'")[1] if "'" in text else "the key"
        return (f"{key} is not a setting of this configuration: check its spelling (add it with +{key}=... only "
                f"if a new key is meant)")
    if isinstance(e, MissingConfigException):
        lines = [ln.strip() for ln in str(e).split("Config search path")[0].splitlines() if ln.strip()]
        head = lines[0].split(": ", 1)[-1]  # Could not find 'dataset/Nope'
        options = [ln for ln in lines[1:] if not ln.startswith("Available options")]
        return f"{head}: choose one of {', '.join(options)}" if options else text
    return text + (f" ({' '.join(str(cause).split())})" if cause is not None else "")
