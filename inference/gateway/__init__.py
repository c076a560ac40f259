"""The data plane: Wattle's OpenAI-compatible `/v1` API, a lean ASGI app in front of vLLM replicas."""
