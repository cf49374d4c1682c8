"""How calls reach the services: the gRPC interceptor chain (auth, drain, caller limit, access
log), TLS, health and reflection, and the HTTP door (``transport.http``)."""
