from tests.conftest import ClientFactory, ServiceFactory


async def test_publish_reaches_subscriber(
    start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service()
    a = await ws_client(service)
    b = await ws_client(service)
    await b.subscribe("topics/t")
    ack = await a.request(
        {
            "type": "publish",
            "channel": "topics/t",
            "event": "note.added",
            "data": {"x": 1},
            "id": "p",
        }
    )
    assert ack["success"] is True
    event = await b.next_event("note.added")
    assert event["data"] == {"x": 1}
