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

LINE_FIELD = re.compile(r"^lines\[(\d+)\]\.(sku|unit_price\.currency)$")
# Values only the server issues (the document says so; a generator cannot forge them), and the
# Idempotency-Key's one stateful rule: a key already used with another request is 422 (its
# shape is in the document, so a generated key only ever fails this way).
SERVER_ISSUED_FIELDS = {"cursor", "Idempotency-Key"}
SERVER_ISSUED_PROBLEMS = {"bad-consistency-token"}
# Stock is cumulative: enough schema-valid additions to one sku pass the most a sku may hold.
STATEFUL_MESSAGES = {"quantity": "stock on hand would exceed the maximum"}
REFUSALS = {400, 413, 415, 422}


def _problem(response):
    try:
        return json.loads(response.content or b"{}")
    except ValueError:
        return {}


def _cross_line_rule_broken(field, body):
    """Whether line i of the body really repeats an earlier sku, or really has another currency
    than the first line: only then is a 422 at that line's sku or currency a cross-field rule
    and not a format the document failed to state."""
    match = LINE_FIELD.match(field)
    if not match or not isinstance(body, dict) or not isinstance(body.get("lines"), list):
        return False
    lines = body["lines"]
    i = int(match.group(1))
    if i >= len(lines) or not isinstance(lines[i], dict):
        return False
    if match.group(2) == "sku":
        return any(isinstance(l, dict) and l.get("sku") == lines[i].get("sku") for l in lines[:i])
    currency = lambda line: (line.get("unit_price") or {}).get("currency")
    return i > 0 and isinstance(lines[0], dict) and currency(lines[i]) != currency(lines[0])


def _allowed(problem, body):
    kind = str(problem.get("type", "")).rsplit("/", 1)[-1]
    if kind in SERVER_ISSUED_PROBLEMS:
        return True
    errors = problem.get("errors") or {}
    if not errors:
        return False

    def explained(field, messages):
        if field in SERVER_ISSUED_FIELDS:
            return True
        if field in STATEFUL_MESSAGES and all(STATEFUL_MESSAGES[field] in m for m in messages):
            return True
        return _cross_line_rule_broken(field, body)

    return all(explained(field, messages) for field, messages in errors.items())


@schemathesis.check
def schema_valid_requests_are_accepted(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code not in REFUSALS:
        return None
    problem = _problem(response)
    if _allowed(problem, case.body):
        return None
    raise AssertionError(
        f"a request the document calls valid was refused with {response.status_code}: "
        f"{problem.get('detail')} {json.dumps(problem.get('errors') or {})}"
    )
