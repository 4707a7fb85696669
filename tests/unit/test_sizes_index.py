"""The usage index (``{p}/configs/{ns}/{name}/sizes``) is rewritten by every commit:
its direct writer and one-pass reader must agree with the canonical form, and refuse
(so that the records are measured again) anything that is not an index."""

from __future__ import annotations

import pytest

from etcdconfig.store.records import Sizes, dump

INDEXES = [
    Sizes(),
    Sizes(((1, 5),), None),
    Sizes(tuple((v, 1100 + v) for v in range(1, 101)), head="sha256:" + "a" * 64),
    Sizes(((3, 0), (9, 7)), head='we"ird\\\u2028é\x01\U0001f600'),
]


@pytest.mark.parametrize("index", INDEXES)
def test_the_direct_writer_writes_the_canonical_json_and_reads_back(index: Sizes) -> None:
    assert index.raw() == dump(index.to_json())
    assert Sizes.parse(index.raw()) == index


@pytest.mark.parametrize(
    "raw",
    [
        b'{"format":1,"head":null,"versions":[[1,true]]}',  # a bool is not a size
        b'{"format":1,"head":null,"versions":[[1,1.0]]}',  # nor is a float
        b'{"format":1,"head":null,"versions":[[2,1],[2,1]]}',  # not increasing
        b'{"format":1,"head":null,"versions":[[3,1],[2,1]]}',
        b'{"format":1,"head":null,"versions":[[0,1]]}',  # versions start at 1
        b'{"format":1,"head":null,"versions":[[1,-1]]}',
        b'{"format":1,"head":null,"versions":[[1,51]]}',  # over the request limit
        b'{"format":1,"head":null,"versions":[[1,2,3]]}',
        b'{"format":1,"head":null,"versions":[{"1":2}]}',
        b'{"format":1,"head":null,"versions":{}}',
        b'{"format":1,"head":3,"versions":[]}',
        b'{"format":2,"head":null,"versions":[]}',
        b'{"head":null,"versions":[]}',
        b"[]",
        b"\xff",
        b"[" * 100_000,
    ],
)
def test_anything_but_an_index_is_refused(raw: bytes) -> None:
    assert Sizes.parse(raw, 50) is None


def test_a_size_at_the_limit_is_accepted() -> None:
    assert Sizes.parse(b'{"format":1,"head":null,"versions":[[1,50]]}', 50) == Sizes(((1, 50),))
