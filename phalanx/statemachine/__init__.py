"""The execution interface and its implementations."""

from phalanx.statemachine.base import StateMachine

__all__ = ["StateMachine"]
