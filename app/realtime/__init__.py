"""The real-time core: protocol, channels, connections, hub, brokers."""
