"""``python -m etcdconfig.devenv``: see :mod:`etcdconfig.devenv.cli`."""

from etcdconfig.devenv.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
