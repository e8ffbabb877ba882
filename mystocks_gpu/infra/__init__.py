"""Connections to external systems and resources: settings, clock, logging, Kafka/Redis clients,
devices, compile caches, the local dev stack. No domain maths, no job logic."""
