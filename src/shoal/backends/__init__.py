"""How agents are started, called, checked and stopped: one protocol, several backends."""

from shoal.backends.base import AgentHandle, AgentSpec, Backend
from shoal.backends.fake import FakeBackend
from shoal.backends.process import ProcessBackend

__all__ = ["AgentHandle", "AgentSpec", "Backend", "FakeBackend", "ProcessBackend"]
