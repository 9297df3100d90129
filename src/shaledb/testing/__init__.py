"""Helpers for testing code built on ShaleDB (and ShaleDB itself): a fault-injecting file
system. Nothing in the engine or the server imports this package."""

from .faultfs import Fault, FaultInjectionFS

__all__ = ["Fault", "FaultInjectionFS"]
