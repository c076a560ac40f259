"""vLLM 0.33's OpenAI-server rules: request validation and error shapes.

Shared by the simulator (which answers as vLLM does) and the gateway (which rejects, before any upstream
call, exactly what vLLM would reject).
"""
