"""The bottom of the server: settings, the task table, the exception types and their
statuses, redaction, threads, offline mode. Imports no torch and no gRPC."""
