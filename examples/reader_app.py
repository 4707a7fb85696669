"""A consumer of etcdconfig: print a Config's current data, then follow every new version.

    ETCDCONFIG_ETCD_ENDPOINTS=127.0.0.1:2379 python examples/reader_app.py default/payments

The reader takes the same ``ETCDCONFIG_*`` settings as the operator (endpoints,
prefix, TLS files, user/password). It reads etcd directly and needs only read
access to ``{prefix}/configs/``. Every record is checksum-verified before the
application sees it, and immutable versions are cached.

A real application would swap its configuration where this prints it: each
record is an immutable snapshot, so holding a reference to ``record.data`` is
safe while the next version is being applied (copy-on-write).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

from etcdconfig.errors import EtcdConfigError, NotFound
from etcdconfig.reader import ConfigReader
from etcdconfig.settings import Settings


async def follow(namespace: str, name: str, *, once: bool) -> int:
    async with ConfigReader(Settings()) as reader:
        try:
            record = await reader.current(namespace, name)
        except NotFound as exc:
            print(f"not recorded yet: {exc}", file=sys.stderr)
            if once:
                return 4
            after = 0
        else:
            print(f"version {record.version} ({record.checksum}):")
            print(json.dumps(record.data, indent=2, sort_keys=True))
            if once:
                return 0
            after = record.version
        # aclosing: leaving the loop closes the etcd watch at once, not at garbage collection
        async with contextlib.aclosing(
            reader.watch(namespace, name, after_version=after)
        ) as versions:
            async for record in versions:
                author = record.author.get("manager", "?")
                print(f"version {record.version} by {author} ({record.origin.get('kind')}):")
                print(json.dumps(record.data, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("config", metavar="NAMESPACE/NAME")
    parser.add_argument("--once", action="store_true", help="print the current version and exit")
    args = parser.parse_args(argv)
    namespace, _, name = args.config.rpartition("/")
    try:
        return asyncio.run(follow(namespace or "default", name, once=args.once))
    except EtcdConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
