"""Schemathesis checks of our own, loaded by scripts/lib/fuzz/run (SCHEMATHESIS_HOOKS).

`schema_valid_requests_are_accepted` is schemathesis' positive_data_acceptance made exact for
our APIs: a request the OpenAPI document calls valid must not be refused as malformed (400, 413,
415) or invalid (422). The only exceptions are rules no JSON schema can state, each named here
and in the document: a value only the server issues (a listing cursor, a consistency token),
the two rules that relate an order's lines (one currency, distinct skus), and a reused
Idempotency-Key. Everything else
a 4xx-for-valid-input finds is a constraint the document fails to state.
"""

import json
import re

import schemathesis

# 422 field paths of rules that relate several fields (documented on PlaceOrderBody).
CROSS_FIELD = (
    re.compile(r"^lines\[\d+\]\.unit_price\.currency$"),
    re.compile(r"^lines\[\d+\]\.sku$"),
)
# Values only the server issues (the document says so; a generator cannot forge them), and the
# Idempotency-Key's one stateful rule: a key already used with another request is 422 (its
# shape is in the document, so a generated key only ever fails this way).
SERVER_ISSUED_FIELDS = {"cursor", "Idempotency-Key"}
SERVER_ISSUED_PROBLEMS = {"bad-consistency-token"}
REFUSALS = {400, 413, 415, 422}


def _problem(response):
    try:
        return json.loads(response.content or b"{}")
    except ValueError:
        return {}


def _allowed(problem):
    kind = str(problem.get("type", "")).rsplit("/", 1)[-1]
    if kind in SERVER_ISSUED_PROBLEMS:
        return True
    fields = list((problem.get("errors") or {}).keys())
    if not fields:
        return False
    return all(
        field in SERVER_ISSUED_FIELDS or any(rule.match(field) for rule in CROSS_FIELD)
        for field in fields
    )


@schemathesis.check
def schema_valid_requests_are_accepted(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code not in REFUSALS:
        return None
    problem = _problem(response)
    if _allowed(problem):
        return None
    raise AssertionError(
        f"a request the document calls valid was refused with {response.status_code}: "
        f"{problem.get('detail')} {json.dumps(problem.get('errors') or {})}"
    )
