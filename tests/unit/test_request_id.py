"""x-request-id values are RFC 9562 version-4 UUIDs in the canonical 8-4-4-4-12 form, as
Envoy's UUID request-id extension makes them."""

import re
import uuid

from meshproxy.http.request_id import new_request_id

_FORM = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_request_ids_are_canonical_v4_uuids():
    seen = set()
    for _ in range(5000):
        rid = new_request_id()
        assert _FORM.fullmatch(rid), rid
        u = uuid.UUID(rid.decode())
        assert u.version == 4 and u.variant == uuid.RFC_4122
        assert str(u).encode() == rid
        seen.add(rid)
    assert len(seen) == 5000


def test_every_random_bit_reaches_the_id():
    # 122 random bits: across many ids every hex digit position but the fixed version takes
    # more than one value (a slicing mistake would pin or drop a digit).
    ids = [new_request_id() for _ in range(2000)]
    for pos in range(36):
        values = {rid[pos] for rid in ids}
        if pos in (8, 13, 18, 23):
            assert values == {ord("-")}
        elif pos == 14:
            assert values == {ord("4")}
        elif pos == 19:
            assert values == set(b"89ab")
        else:
            assert len(values) > 8, pos
