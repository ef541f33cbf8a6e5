"""Knowbot: a self-hosted knowledge assistant for the chat apps a team already uses."""

__version__ = "0.1.0"
