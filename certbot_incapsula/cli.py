"""Door 2, the `certbot-incapsula` command: argv and an ACME client's hook environment -> core
calls; reports -> lines on stdout, warnings and the one-line reason on stderr, an exit status.

For the certbot snap (which loads no pip-installed plugin but runs deploy hooks), lego, and any
ACME client that can run a command after issuance; and for a timer (`sync`) and monitors
(`status`). The deployment itself is in core/, shared with the certbot installer.

This module is the entry point: it keeps a hook's foreign PYTHONPATH out, then hands argv to
cli_args.py (the parser, the help) and the subcommand to cli_commands.py (what each one does).
"""
from __future__ import annotations

import os
import sys


def _isolate() -> None:
    """Old certbot snaps run hooks with PYTHONPATH naming the snap's own packages, and a hook runs
    in whatever directory: neither may lend this command a module of another Python."""
    pythonpath = os.environ.pop("PYTHONPATH", None)
    os.environ.pop("PYTHONHOME", None)  # nor to what this command runs
    # An empty entry ("/snap/...:") is the current directory, as abspath("") says too.
    foreign = {os.path.abspath(p) for p in pythonpath.split(os.pathsep)} if pythonpath else set()
    # This Python's own directories stay, even when PYTHONPATH names them as well.
    site = sys.modules.get("site")
    ours = [os.path.dirname(os.__file__), os.path.dirname(os.path.dirname(__file__))]
    ours += getattr(site, "getsitepackages", list)()
    foreign -= {os.path.abspath(p) for p in ours}
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) not in foreign]


_isolate()  # before anything but the standard library is imported

import contextlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

from certbot_incapsula.cli_args import build_parser  # noqa: E402
from certbot_incapsula.cli_commands import check, deploy, status, sync  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "status" in argv and "--nagios" in argv:
        # Bad arguments are UNKNOWN (3) to a monitor, not argparse's 2, said on stdout.
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):
                args = build_parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code in (0, None):
                raise
            last = (said.getvalue().strip().splitlines() or ["bad arguments"])[-1]
            print(f"INCAPSULA UNKNOWN - {last}")
            return 3
    else:
        args = build_parser().parse_args(argv)
    # The API client's retries and the core's warnings, on stderr; nothing secret is logged.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    handler = {"deploy": deploy, "sync": sync, "status": status, "check": check}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def status_main(argv: Optional[Sequence[str]] = None) -> int:
    """`certbot-incapsula-status`, kept as an alias of `certbot-incapsula status`."""
    return main(["status", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
