"""``python -m fashion_attr.demo``: see :func:`fashion_attr.demo.cli.main`."""

from fashion_attr.demo.cli import main

raise SystemExit(main())
