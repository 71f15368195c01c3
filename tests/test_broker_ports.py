"""Ports handed out without a race (issue 25): free_port() names a port that was free a
moment ago; another process may take it before mosquitto binds. The broker fixture then
starts again on another port instead of failing the test (or, worse, a client talking to
whoever took the port). Mutation: start() raising on the first failed bind (no retry) -
fails."""
from __future__ import annotations

import socket

import broker as broker_mod
from broker import Backend, Mosquitto


def squat(monkeypatch, module) -> tuple[socket.socket, int]:
    """A port held by another socket, handed out first by `module.free_port` (then free ones):
    the race of a port taken between choosing it and binding it."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    real = module.free_port
    monkeypatch.setattr(module, "free_port", lambda: next(ports, None) or real())
    return squatter, taken


def test_a_port_taken_between_choosing_and_binding_gives_another(tmp_path, monkeypatch):
    squatter, taken = squat(monkeypatch, broker_mod)
    b = Mosquitto(tmp_path)
    assert b.port == taken
    try:
        b.start()
        assert b.port != taken
        be = Backend(b, subscribe="facegate/#")  # the broker is ours and answers on its new port
        try:
            be.publish("facegate/v1/_probe/x", b"x")  # a topic the backend user may write and read
            assert be.wait_for(lambda ms: [m for m in ms if m.topic == "facegate/v1/_probe/x"], 10)
        finally:
            be.close()
    finally:
        b.stop()
        squatter.close()


def test_postgres_too_starts_on_another_port_when_its_port_was_taken(monkeypatch):
    """The same race for tests/postgres.py (issue 25). Mutation: no retry - fails with
    'could not bind ... Address already in use'."""
    import postgres as pg_mod
    from facegate.backend.config import StoreConfig
    from facegate.backend.store import Store

    squatter, taken = squat(monkeypatch, pg_mod)
    pg = pg_mod.Postgres()
    assert pg.port == taken
    try:
        pg.start()
        assert pg.port != taken
        dsn = pg.fresh_dsn()
        for _ in range(2):  # the server is ours, on its new port; a restart keeps that port
            s = Store.open(StoreConfig(dsn=dsn))
            try:
                assert s.query("SELECT 1") == [(1,)]
            finally:
                s.close()
            pg.stop()
            pg.start()
    finally:
        pg.remove()
        squatter.close()
