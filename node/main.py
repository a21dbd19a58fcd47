"""The node process: parse the configuration, run the node until a signal, exit.

Rules
* Invalid flags, files or settings exit with status 2 and one line on stderr
  saying what is wrong, before any file or port is touched.
* SIGTERM and SIGINT start a clean shutdown (controlled shutdown through the
  controller with a bounded wait, stop serving, flush and close the logs,
  close the quorum) and exit 0. A second signal exits at once with status 1.
* Every log line goes to stderr and carries the node id, so that the merged
  output of a local cluster can be read.
* Exit status 1 means the node failed at run time (e.g. its port is taken);
  the traceback is on stderr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from node.config import ConfigError, NodeConfig, parse_args


def configure_logging(node_id: int) -> None:
    level_name = os.environ.get("SHOAL_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s node={node_id} %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level_name, logging.INFO))
    # pysyncobj logs every reconnect attempt at INFO; it drowns the node's own lines.
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)


async def run(config: NodeConfig) -> int:
    from node.broker import Node, StartupError

    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            logging.getLogger("node").error("second signal %s: exiting without a clean shutdown", signum)
            os._exit(1)
        logging.getLogger("node").info("signal %s: clean shutdown", signal.Signals(signum).name)
        stop_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    node = Node(config)
    try:
        await node.start()
    except StartupError as error:
        print(f"shoal node {config.node_id}: {error}", file=sys.stderr)
        return 1
    try:
        await stop_requested.wait()
    finally:
        await node.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"shoal node: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.node_id)
    try:
        return asyncio.run(run(config))
    except KeyboardInterrupt:
        return 1
