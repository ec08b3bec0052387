"""Data: synthetic tasks (MQAR) and dataset formats."""

from .mqar import MQARConfig, make_mqar

__all__ = ["MQARConfig", "make_mqar"]
