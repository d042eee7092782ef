"""python -m loadtest.drill: see loadtest.drill (options: --help)."""

import sys

from loadtest.drill.run import main

sys.exit(main())
