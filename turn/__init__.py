"""huiyi's TURN server (RFC 8656, with STUN Binding): relays media for clients that cannot reach the
media server directly, over UDP, TCP or TLS. ``turn.process`` runs it beside the main server;
``turn.credentials`` makes the time-limited credentials the control plane hands out."""
