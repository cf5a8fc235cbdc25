"""The parser `mmrerank benchmark` reads its config with, for tests that parse configs without running them."""

from __future__ import annotations

from jsonargparse import ArgumentParser

from mmrerank.benchmark import benchmark
from mmrerank.cli import function_parser


def benchmark_parser() -> ArgumentParser:
    return function_parser(benchmark, "mmrerank benchmark")
