"""FHIR R4 Subscriptions (docs/subscriptions.md): criteria matched on every write path
in the write's transaction (rules.py), delivered in order by the workers (worker.py,
delivery.py) over rest-hook and email, or as websocket pings (websocket.py)."""
