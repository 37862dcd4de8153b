"""Signed event notifications to operators' URLs (docs/operations.md#webhooks): the event types,
their signature, and the queue that delivers them with retries, away from the requests that
caused them."""
