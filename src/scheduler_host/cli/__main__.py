"""`python -m scheduler_host.cli`: the `scheduler-host` command."""

import sys

from scheduler_host.cli import main

sys.exit(main())
