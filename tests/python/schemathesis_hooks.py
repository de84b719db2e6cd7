"""Schemathesis hooks for tests/it/openapi.rs (loaded through SCHEMATHESIS_HOOKS).

The generator draws `Idempotency-Key` values from a small space ("0", "00", ...), so two
different generated orders often share a key, and the API rightly answers the second with 422
(`/problems/idempotency-key-reused`): a conflict with an earlier request, not invalid data, but
the `positive_data_acceptance` check would count it against a schema-valid request. So a valid
key is replaced with one derived from the body: the same body still replays its order, and a
different body never meets another's key. Invalid keys (blank, non-ASCII, too long) are sent as
generated, so the 400 for them stays under test.

`POST /v1/auth/register` wants `confirm` equal to `password`, which a JSON Schema cannot say: a
generated body that is otherwise valid gets its `confirm` set to its `password`.
"""

import hashlib
import json
import re

import schemathesis

VALID_KEY = re.compile(r"^[\t -~]*[!-~][\t -~]*$")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.method.upper() == "POST" and case.path == "/v1/auth/register":
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("password"), str) and "confirm" in body:
            body["confirm"] = body["password"]
        return
    if case.method.upper() != "POST" or case.path != "/v1/orders" or not case.headers:
        return
    key = case.headers.get("Idempotency-Key")
    if isinstance(key, str) and len(key) <= 255 and VALID_KEY.match(key):
        body = json.dumps(case.body, sort_keys=True, default=str)
        case.headers["Idempotency-Key"] = "k-" + hashlib.sha256(body.encode()).hexdigest()


# CPython 3.11's parser can raise "SystemError: AST constructor recursion depth mismatch" when
# `ast.parse` runs deep in the stack, which hypothesis does to describe a filter lambda
# (schemathesis filters generated query parameters with one). The description is cosmetic (a
# strategy's repr), so fall back to a plain one instead of failing the operation.
from hypothesis.internal import lambda_sources  # noqa: E402

_describe_lambda = lambda_sources.lambda_description


def _lambda_description(f):
    try:
        return _describe_lambda(f)
    except SystemError:
        return "lambda"


lambda_sources.lambda_description = _lambda_description
