"""Load harness: synthetic WebRTC clients, the SFU and its baselines measured side by side."""
