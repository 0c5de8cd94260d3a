"""``python -m hubcompare.training.raynode start ...``: Ray's own ``ray`` command, keeping 127.0.0.1 as given.

Ray replaces a loopback ``--node-ip-address`` or ``--address`` by this machine's network address (so that
other machines could reach the node). For a Ray cluster of several nodes on one machine, bound to
127.0.0.1 (each node with its own ``--temp-dir``), run each ``ray start`` through this module instead::

    python -m hubcompare.training.raynode start --head --node-ip-address=127.0.0.1 --port=6380 ...
    python -m hubcompare.training.raynode start --address=127.0.0.1:6380 --node-ip-address=127.0.0.1 ...

and give the grid ``--ray-address 127.0.0.1:6380`` (:func:`~.backends.connect_ray` keeps it too). Every
argument goes to Ray's command as it is; Ray is imported only here.
"""

from __future__ import annotations

import os
import sys

from .backends import keep_loopback


def main(argv: list[str] | None = None) -> int:
    import ray  # an optional extra: only this command needs it
    from ray.scripts.scripts import cli as ray_cli

    # Ray refuses a worker node when it is told clusters are off (the other way to keep 127.0.0.1): keep them on
    os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    with keep_loopback(ray):
        try:
            ray_cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="ray", standalone_mode=True)
        except SystemExit as e:
            return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
