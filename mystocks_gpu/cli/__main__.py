"""``python -m mystocks_gpu.cli``."""

from mystocks_gpu.cli.main import main

raise SystemExit(main())
