"""`python -m grokwatch.ui STORE`: open the TUI on a store."""

import sys

from grokwatch.ui.app import main

sys.exit(main())
