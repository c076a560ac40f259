"""``python -m inference.simulator``: serve the simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import Simulator
from .config import ConfigError, SimulatorConfig, config_from_args

logger = logging.getLogger("inference.simulator")


async def serve(config: SimulatorConfig) -> None:
    simulator = Simulator(config)
    # Tokenizers load before the port opens, so a caller that waits for the port (or /health) never
    # pays for them on its first request.
    await asyncio.get_running_loop().run_in_executor(None, simulator.warm_up)
    runner = web.AppRunner(simulator.build_app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True, backlog=1024)
    await site.start()
    # The cold-start window is measured from the moment the port accepts connections.
    simulator.engine.restart_cold_start()
    logger.warning(
        "vLLM simulator listening on http://%s:%d (models: %s; embedding: %s)",
        config.host,
        config.port,
        ", ".join(config.served_model_names),
        config.embedding_model or "none",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
    except ConfigError as exc:
        print(f"inference.simulator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # vLLM itself serves on uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
