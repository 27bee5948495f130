"""Local stand-ins for the cloud: a PostgreSQL server, moto, and the SQS -> Lambda poller.

These are development tools; nothing here runs in a deployed Lambda.
"""
