"""`python -m pneumo.bench`: see `pneumo.bench.cli` for the options, `folder` and `table` for the figures."""
from pneumo.bench.cli import main

raise SystemExit(main())
