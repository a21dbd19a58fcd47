"""``python -m node``: run one shoal node (see node/main.py)."""

from node.main import main

raise SystemExit(main())
