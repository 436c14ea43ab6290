"""``python -m vnode`` is the ``vnode`` console script."""

from vnode.cli import main

raise SystemExit(main())
