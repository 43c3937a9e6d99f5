"""Prefect flows, deployments, the local stack and the CLI."""

from tasks.lib.core.quiet import quiet_known_noise

# Every entry point (the CLI, a deployment's flow-run process) imports this package before peft, which imports
# bitsandbytes, which logs at import: the known third-party noise is filtered first.
quiet_known_noise()
