"""The server's assembly: every process opens its Store through `open_store` (which makes it speak the HTTP
contract's webhook body), and the generation routes come from `served_methods()` alone."""

from __future__ import annotations

import argparse

from idforge.server.config import ServerConfig
from idforge.server.contract import status_body
from idforge.server.db.jobs_repo import default_webhook_body
from idforge.server.store_factory import open_store
from server_fixtures import FakeGenerator


def test_open_store_sets_the_contract_webhook_body(tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    for given in (ServerConfig(db_path=db), ServerConfig(db_path=str(db)), db, str(db)):
        store = open_store(given)
        try:
            assert store.webhook_body is status_body and store.webhook_body is not default_webhook_body
            assert store.target.url.database == str(db)
        finally:
            store.close()
    monkeypatch.setenv("IDFORGE_DB", str(tmp_path / "env.db"))  # no --db: $IDFORGE_DB, still the contract
    store = open_store(None)
    try:
        assert store.webhook_body is status_body and (tmp_path / "env.db").exists()
    finally:
        store.close()


def test_the_cli_and_the_app_open_their_stores_through_open_store(tmp_path):
    from idforge.commands.keys import _store
    from idforge.server.app import create_app

    store = _store(argparse.Namespace(db=str(tmp_path / "cli.db")))
    try:
        assert store.webhook_body is status_body
    finally:
        store.close()
    app = create_app(ServerConfig(db_path=tmp_path / "app.db"), generator=FakeGenerator())
    assert app.state.server.store.webhook_body is status_body and app.state.server.owns_store
    app.state.server.store.close()


def test_the_generation_routes_are_exactly_the_served_methods(tmp_path):
    from idforge.server.app import create_app
    from idforge.server.routers.methods import served_methods

    app = create_app(ServerConfig(db_path=tmp_path / "app.db"), generator=FakeGenerator())
    try:
        paths = app.openapi()["paths"]
        served = list(served_methods())
        assert [name for _, name, _, _ in served] == [
            "instantid",
            "faceid",
            "insta-depth",
            "pulid",
        ]  # the registry's
        for path, name, body, _ in served:
            for version in ("v1", "v2"):
                operation = paths[f"/{version}/{path}"]["post"]
                assert operation["operationId"] == f"{version}_{name.replace('-', '_')}"
                schema = operation["requestBody"]["content"]["application/json"]["schema"]
                assert schema["$ref"].endswith(f"/{body.__name__}")  # the body model is documented
        generation = {p for p in paths if p.count("/") == 2 and p.split("/")[1] in ("v1", "v2")}
        assert generation - {"/v1/account", "/v1/styles", "/v2/workflow"} == {  # workflow: a graph of methods
            f"/{v}/{path}" for path, *_ in served for v in ("v1", "v2")
        }
    finally:
        app.state.server.store.close()
