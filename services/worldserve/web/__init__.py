"""The web gateway: the play page and live WebSocket play on Serve's HTTP proxy."""
