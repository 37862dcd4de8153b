"""The huiyi control plane: REST API, signaling and jobs on one aiohttp application."""
