"""A faithful vLLM 0.33.0 OpenAI-compatible server simulator for development and tests.

Run ``python -m inference.simulator --port 8001``; see ``docs/simulator.md`` for every knob.
"""

from __future__ import annotations

from .app import Simulator
from .config import RuntimeKnobs, SimulatorConfig, config_from_args

__all__ = ["RuntimeKnobs", "Simulator", "SimulatorConfig", "config_from_args"]
