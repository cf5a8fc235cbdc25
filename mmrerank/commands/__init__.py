"""The console script's commands on a user's own files: `rerank` a run file, `evaluate` one, `index` a folder with a
first stage and `search` that index. Each is a function of its arguments (the `mmrerank <command>` parser is built
from its signature); `mmrerank.cli` only dispatches to them."""
