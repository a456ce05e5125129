"""schemathesis against the server's own OpenAPI document, on a live server (fake generator: the contract, fast).

Every operation is fuzzed with a few schema-valid and schema-invalid requests (bounded: a handful of examples per
operation, drawn anew every run), authenticated with a real key. Checks: never a 5xx, status codes and content
types the document declares, bodies that conform to the declared response schemas, invalid input refused, 405 with Allow for methods
a path does not have. Left out, with reason: `positive_data_acceptance` (a schema-valid string is not necessarily
a decodable image, so such a body is rightly a 400) and the checks that need links between operations.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from server_fixtures import FakeGenerator, running_server


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz") / "server.db"
    with running_server(db, FakeGenerator(), queue_size=64) as (url, keys):
        _, token = keys.create_key(1_000_000)
        yield url, token


MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def test_every_operation_conforms_and_never_5xx(live):
    url, token = live
    api = schemathesis.openapi.from_url(url + "/openapi.json")
    failures: list[str] = []
    tried = 0
    for result in api.get_all_operations():
        operation = result.ok()
        for mode in MODES:

            @settings(
                max_examples=6,
                deadline=None,
                database=None,  # new examples every run (hypothesis prints the failing one)
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                case.call_and_validate(
                    base_url=url,
                    headers={"x-api-key": token},
                    excluded_checks=[positive_data_acceptance],
                    timeout=30,
                )

            try:
                fuzz()
                tried += 1
            except (
                Unsatisfiable
            ):  # no invalid input exists (a free-form string path id, no body): nothing to send
                assert mode is GenerationMode.NEGATIVE
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")
    assert tried >= 15 + 7  # every operation with valid input; the seven with a body also with invalid input
    assert not failures, "\n\n".join(failures)
