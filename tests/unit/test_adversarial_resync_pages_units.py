"""Adversarial units beside tests/integration/test_adversarial_resync_pages.py: the
usage index's direct writer and one-pass reader (``Sizes.raw``/``Sizes.parse``)
against the canonical writer and the reader they replace, over odd inputs; and the
real ``Kube.config_pages`` over a fake of the generated client's list calls."""

from __future__ import annotations

import random
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from etcdconfig.canonical import MAX_SAFE_INTEGER, loads
from etcdconfig.errors import CorruptRecord
from etcdconfig.kube import Kube, KubeError
from etcdconfig.store.records import FORMAT, Sizes, dump

LIMIT = 1000


def old_parse(raw: bytes, max_size: int | None = None) -> Sizes | None:
    """``Sizes.parse`` as it was before 0909cca (the canonical reader)."""
    try:
        obj = loads(raw)
    except (ValueError, RecursionError, CorruptRecord):
        return None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        return None
    head = obj.get("head")
    if head is not None and not isinstance(head, str):
        return None
    pairs = obj.get("versions")
    if not isinstance(pairs, list):
        return None
    entries: list[tuple[int, int]] = []
    for pair in pairs:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(type(x) is int for x in pair)
            or pair[0] < 1
            or pair[1] < 0
            or (max_size is not None and pair[1] > max_size)
            or (entries and pair[0] <= entries[-1][0])
        ):
            return None
        entries.append((pair[0], pair[1]))
    return Sizes(tuple(entries), head)


def _random_head(rng: random.Random) -> str | None:
    if rng.random() < 0.2:
        return None
    pool = [
        *map(chr, range(0x80)),
        "\u2028",
        "\u2029",
        "\u00e9",
        "\ufeff",
        "\uffff",
        "\U0001f600",
        "\U0010ffff",
        '"',
        "\\",
        "/",
    ]
    return "".join(rng.choice(pool) for _ in range(rng.randrange(0, 24)))


def _random_sizes(rng: random.Random) -> Sizes:
    v = 0
    entries = []
    for _ in range(rng.randrange(0, 8)):
        v += rng.choice([1, 1, 2, 1000, MAX_SAFE_INTEGER // 64])
        entries.append((v, rng.choice([0, 1, 999, LIMIT, rng.randrange(0, LIMIT)])))
    return Sizes(tuple(entries), _random_head(rng))


def test_the_direct_writer_equals_the_canonical_writer_over_random_indexes() -> None:
    rng = random.Random(20261208)
    for _ in range(3000):
        index = _random_sizes(rng)
        raw = index.raw()
        assert raw == dump(index.to_json()), index
        assert Sizes.parse(raw, LIMIT) == index == old_parse(raw, LIMIT)


ODD = [
    b' {"format":1,"head":null,"versions":[[1,5]]} ',  # whitespace
    b'\xef\xbb\xbf{"format":1,"head":null,"versions":[[1,5]]}',  # a UTF-8 BOM
    '{"format":1,"head":null,"versions":[[1,5]]}'.encode("utf-16"),
    b'{"format":1,"head":null,"versions":[[1,5]],"versions":[[1,6]]}',  # duplicate keys
    b'{"format":1,"format":2,"head":null,"versions":[]}',
    b'{"format":1.0,"head":null,"versions":[]}',
    b'{"format":true,"head":null,"versions":[]}',
    b'{"format":1,"head":null,"versions":[[1,NaN]]}',
    b'{"format":1,"head":null,"versions":[[1,Infinity]]}',
    b'{"format":1,"head":null,"versions":[[1,-Infinity]]}',
    b'{"format":1,"head":null,"versions":[[1,1e3]]}',
    b'{"format":1,"head":null,"versions":[[1e0,3]]}',
    b'{"format":1,"head":null,"versions":[[1,-0]]}',
    b'{"format":1,"head":null,"versions":[[-0,1]]}',
    b'{"format":1,"head":null,"versions":[[1,false]]}',
    b'{"format":1,"head":null,"versions":[[true,1]]}',
    b'{"format":1,"head":null,"versions":[[1,null]]}',
    b'{"format":1,"head":"\\ud800","versions":[[1,5]]}',  # a lone surrogate
    b'{"format":1,"head":"\\u0000","versions":[]}',
    b'{"format":1,"versions":[[1,5]]}',  # no head: null
    b'{"format":1,"head":null}',
    b'{"format":1,"head":null,"versions":[[1,5]]}x',
    b'{"format":1,"head":null,"versions":[[1,5]]}\x00',
    b'{"format":1,"head":null,"versions":[[1,00]]}',
    b'{"format":1,"head":null,"versions":[[01,5]]}',
    b'{"format":1,"head":null,"versions":[[1,' + b"9" * 5000 + b"]]}",
    b'{"format":1,"head":null,"versions":[[1,9007199254740993]]}',  # a size over 2^53
    b'{"format":1,"head":null,"versions":[[1,5],[9007199254740993,5]]}',  # a version
    b'{"format":1,"head":null,"versions":[[9007199254740993,5]]}',
    b'{"format":1,"head":null,"versions":[]}',
    b'{"format":1,"head":null,"versions":[[1,5],[2,0],[3,1000]]}',
    b'{"format":1,"head":null,"versions":[[1,5],[2,0],[3,1001]]}',
    b"\xff\xfe",
    b"",
    b"null",
    b'"x"',
]


@pytest.mark.parametrize("raw", ODD)
def test_the_one_pass_reader_agrees_with_the_canonical_reader_but_beyond_2_53(
    raw: bytes,
) -> None:
    """Both readers accept and refuse the same inputs (whitespace, a BOM, UTF-16,
    duplicate keys: plain ``json`` in both), but one: a version beyond 2^53 (which the
    canonical reader turned into a float). No head can name such a version (the
    ``_sizes`` guard needs ``newest == head.version``), so retention cannot follow it."""
    new, old = Sizes.parse(raw, LIMIT), old_parse(raw, LIMIT)
    if new is not None and any(v > MAX_SAFE_INTEGER for v, _ in new.entries):
        assert old is None
        assert new.newest > MAX_SAFE_INTEGER
    else:
        assert new == old


def test_every_accepted_index_round_trips_through_the_direct_writer() -> None:
    """What the reader accepts, the writer writes back canonically and reads again the
    same (a lone-surrogate head aside: no head the store writes is one)."""
    for raw in ODD:
        index = Sizes.parse(raw, LIMIT)
        if index is None or (index.head is not None and "\ud800" in index.head):
            continue
        again = index.raw()
        assert Sizes.parse(again, LIMIT) == index
        if all(v <= MAX_SAFE_INTEGER for v, _ in index.entries):
            assert again == dump(index.to_json())


# --- the real Kube.config_pages ------------------------------------------------------------------


class FakeCustom:
    """The two list calls of ``CustomObjectsApi`` over pages given in advance."""

    def __init__(self, pages: list[dict[str, Any] | ApiException]) -> None:
        self.pages = pages
        self.calls: list[tuple[str | None, dict[str, Any]]] = []

    async def _answer(self, ns: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((ns, dict(kwargs)))
        page = self.pages[len(self.calls) - 1]
        if isinstance(page, ApiException):
            raise page
        return page

    async def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, **kwargs: Any
    ) -> dict[str, Any]:
        return await self._answer(namespace, kwargs)

    async def list_cluster_custom_object(
        self, group: str, version: str, plural: str, **kwargs: Any
    ) -> dict[str, Any]:
        return await self._answer(None, kwargs)


def kube_with(custom: FakeCustom) -> Kube:
    kube = Kube.__new__(Kube)
    kube.custom = custom  # type: ignore[assignment]
    return kube


def item(name: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "prod", "name": name, "uid": f"uid-{name}"}}


async def test_config_pages_follows_continue_tokens_to_the_end() -> None:
    custom = FakeCustom(
        [
            {"metadata": {"continue": "t1"}, "items": [item("a"), item("b")]},
            {"metadata": {"continue": "t2"}, "items": None},
            {"metadata": {"continue": ""}, "items": [item("c")]},
        ]
    )
    kube = kube_with(custom)
    pages = [[o["metadata"]["name"] for o in p] async for p in kube.config_pages("prod", limit=2)]
    assert pages == [["a", "b"], [], ["c"]]
    assert custom.calls == [
        ("prod", {"limit": 2}),
        ("prod", {"limit": 2, "_continue": "t1"}),
        ("prod", {"limit": 2, "_continue": "t2"}),
    ]


async def test_config_pages_stops_after_a_page_without_metadata() -> None:
    custom = FakeCustom([{"items": [item("a")]}, {"items": [item("b")]}])
    kube = kube_with(custom)
    pages = [p async for p in kube.config_pages(None)]
    assert [[o["metadata"]["name"] for o in p] for p in pages] == [["a"]]
    assert custom.calls == [(None, {"limit": 500})]


async def test_a_page_that_fails_after_two_is_an_explained_error_and_list_configs_raises() -> None:
    custom = FakeCustom(
        [
            {"metadata": {"continue": "t1"}, "items": [item("a")]},
            {"metadata": {"continue": "t2"}, "items": [item("b")]},
            ApiException(status=410, reason="Gone"),
        ]
    )
    kube = kube_with(custom)
    seen: list[str] = []

    async def consume() -> None:
        async for page in kube.config_pages("prod"):
            seen.extend(o["metadata"]["name"] for o in page)

    with pytest.raises(KubeError) as info:
        await consume()
    assert seen == ["a", "b"]
    assert info.value.status == 410
    assert str(info.value) == "list Configs: HTTP 410 Gone"
    custom2 = FakeCustom(
        [{"metadata": {"continue": "t1"}, "items": [item("a")]}, ApiException(status=500)]
    )
    with pytest.raises(KubeError):
        await kube_with(custom2).list_configs("prod")
