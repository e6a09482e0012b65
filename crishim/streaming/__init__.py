"""Exec, Attach and PortForward streaming: the HTTP server, SPDY/3.1 and WebSocket, free of gRPC."""
