"""Parsers for tests that parse configs without running them: `mmrerank benchmark`'s, and `mmrerank fit`'s
(`ParseOnly`)."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from mmrerank.benchmark import benchmark
from mmrerank.cli import function_parser
from mmrerank.fitting import MMRerankCLI


def benchmark_parser() -> ArgumentParser:
    return function_parser(benchmark, "mmrerank benchmark")


class ParseOnly(MMRerankCLI):
    """`mmrerank fit`'s CLI that parses and type-checks a config (class paths, init args, the old keys' migration)
    without building anything."""

    def instantiate_classes(self) -> None:
        pass
