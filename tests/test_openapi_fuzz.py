"""Schemathesis over the served OpenAPI document, against a real server process: no 5xx, and
every answer (status, content type, body) inside the schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server_process import ServerProcess, request, run_cli, start_server

ADMIN = {"username": "fuzz_admin", "email": "fuzz@example.com", "password": "fuzz-admin-123"}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    data_dir = str(tmp_path_factory.mktemp("fuzz") / "data")
    created = run_cli(
        "create-admin",
        "--username",
        ADMIN["username"],
        "--email",
        ADMIN["email"],
        "--data-dir",
        data_dir,
        env={"HUIYI_ADMIN_PASSWORD": ADMIN["password"]},
    )
    assert created.returncode == 0, created.stderr
    log = Path(data_dir).parent / "server.log"
    server = start_server("--data-dir", data_dir, log=log, env={"HUIYI_RATE_LIMITS": "off"})
    status, session = request(
        "POST", server.url + "/api/v1/auth/login", {"username": ADMIN["username"], "password": ADMIN["password"]}
    )
    assert status == 200
    yield server, session["data"]["access_token"]
    server.stop()
    served = log.read_text()
    assert "Traceback" not in served, served
    assert served.count('"POST /api/v1/auth/register') > 20, "the fuzzer reached the server"


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    negative_data_rejection,
]


def test_api_answers_inside_its_schema(fuzz_server: tuple[ServerProcess, str]) -> None:
    server, token = fuzz_server
    # Deleting the caller's own account would end the run's admin session; its behaviour is
    # covered in test_users.
    api_schema = schemathesis.openapi.from_url(server.url + "/api/v1/openapi.json").exclude(
        path="/api/v1/users/account", method="DELETE"
    )
    failures: list[str] = []
    tested = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

        try:
            exercise()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
        tested += 1
    assert tested >= 30
    assert not failures, "\n\n".join(failures)
