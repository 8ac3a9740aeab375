"""The end-to-end cases of scripts/test_server.py, one module per area; see support.py."""
