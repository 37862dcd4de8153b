#!/usr/bin/env python3
"""Start huiyi: ``python run_server.py [--host H] [--port P] [--data-dir D] [--config F]``.
``python run_server.py create-admin --username U --email E`` creates the first administrator;
``python run_server.py worker --redis-url URL`` runs an AI worker node (docs/ai.md)."""

import sys

from control.cli import main

if __name__ == "__main__":
    sys.exit(main())
