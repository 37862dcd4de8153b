"""Prometheus metrics of one node (docs/operations.md#metrics): instruments fed by the control plane,
series read at scrape time from what the media server, signaling hub, TURN process and job runner
already count, and the listener that serves them."""
